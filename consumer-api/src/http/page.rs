//! The answer of every list: `{data, next_cursor, has_more}` under the one cursor rule
//! ([`crate::service::Page`]).

use serde::Serialize;

use crate::service::Page;

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T> {
    /// The items, in the list's order.
    pub data: Vec<T>,
    /// Always present: pass it as `after` to continue. The position of the last item
    /// returned (or examined), or the `after` given when there is nothing after it.
    pub next_cursor: String,
    /// Whether asking again right away may return more.
    pub has_more: bool,
}

impl<T> List<T> {
    /// The answer for `page`, each item shown as `T`.
    pub fn of<U>(page: Page<U>, view: impl FnMut(U) -> T) -> Self {
        let page = page.map(view);
        Self {
            data: page.items,
            next_cursor: page.next_cursor,
            has_more: page.has_more,
        }
    }
}
