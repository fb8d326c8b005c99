-- Delivery order per subscription: 'none' (parallel, the former behaviour) or 'key' (one
-- delivery in flight per ordering key, in publish order).
ALTER TABLE subscriptions ADD COLUMN ordering TEXT NOT NULL DEFAULT 'none';
