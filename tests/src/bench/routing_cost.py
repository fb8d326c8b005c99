"""Broker CPU per confirmed publish: 4 quorum queues behind an x-consistent-hash exchange
(routing key = a random id) vs a direct exchange with bindings 0..3 (routing key = hash mod 4).
Alternates the two, reads the broker's utime+stime from /proc around each phase.

Usage (docs/SCALING.md, "Why the consistent-hash exchange"):
  RELAY_HOME=/tmp/rc RELAY_AMQP_PORT=5799 deploy/local/broker.sh start
  python3 -m venv /tmp/rc/venv && /tmp/rc/venv/bin/pip install aio-pika
  pid=$(RELAY_HOME=/tmp/rc RELAY_AMQP_PORT=5799 deploy/local/broker.sh ctl status | awk '/OS PID/ {print $3}')
  /tmp/rc/venv/bin/python tests/src/bench/routing_cost.py amqp://guest:guest@127.0.0.1:5799/%2f "$pid" 20000 4
  RELAY_HOME=/tmp/rc RELAY_AMQP_PORT=5799 deploy/local/broker.sh stop
Afterwards `deploy/local/broker.sh ctl list_queues name messages` shows both spreads.
"""
import asyncio, os, sys, time, uuid, zlib
import aio_pika

URL, PID, N, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
TICK = os.sysconf("SC_CLK_TCK")

def cpu():
    with open(f"/proc/{PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK

async def main():
    conn = await aio_pika.connect_robust(URL)
    ch = await conn.channel(publisher_confirms=True)
    chx = await ch.declare_exchange("bench.ch", "x-consistent-hash", durable=True)
    dx = await ch.declare_exchange("bench.dx", aio_pika.ExchangeType.DIRECT, durable=True)
    queues = {}
    for kind, ex in (("ch", chx), ("dx", dx)):
        for k in range(4):
            q = await ch.declare_queue(f"bench.{kind}.{k}", durable=True, arguments={"x-queue-type": "quorum"})
            await q.bind(ex, routing_key="1" if kind == "ch" else str(k))
            queues[(kind, k)] = q
    body = b"x" * 500
    async def phase(kind, ex):
        for q in [q for (kk, _), q in queues.items() if kk == kind]:
            await q.purge()
        start_cpu, start = cpu(), time.monotonic()
        sent = 0
        while sent < N:
            batch = []
            for _ in range(min(256, N - sent)):
                key = uuid.uuid4().hex
                rk = key if kind == "ch" else str(zlib.crc32(key.encode()) % 4)
                batch.append(ex.publish(aio_pika.Message(body, delivery_mode=2), routing_key=rk))
            await asyncio.gather(*batch)
            sent += len(batch)
        secs, used = time.monotonic() - start, cpu() - start_cpu
        return secs, used
    for r in range(ROUNDS):
        for kind, ex in (("ch", chx), ("dx", dx)) if r % 2 == 0 else (("dx", dx), ("ch", chx)):
            secs, used = await phase(kind, ex)
            print(f"round {r} {kind}: {N} msgs {N/secs:.0f} msg/s broker {used*1e6/N:.1f} us/msg", flush=True)
    await conn.close()

asyncio.run(main())
