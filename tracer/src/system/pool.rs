//! A small worker pool for blocking work over many items (discovery and doctor checks of
//! every sandbox): most of the time goes to child processes and netlink round trips, so a few
//! more threads than cores keeps them busy.

/// Applies `f` to every item on up to `max_workers` threads (each with its own state from
/// `state`), and returns the results that are `Some`, in the order of `items`.
pub fn map<T: Sync, S, R: Send>(
    items: &[T],
    max_workers: usize,
    state: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> Option<R> + Sync,
) -> Vec<R> {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(items.len()));
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get() * 4)
        .min(max_workers)
        .min(items.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut st = state();
                while let Some((i, item)) = {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    items.get(i).map(|it| (i, it))
                } {
                    if let Some(r) = f(&mut st, item) {
                        out.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
                    }
                }
            });
        }
    });
    let mut done = out.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_input_order() {
        let items: Vec<u32> = (0..100).collect();
        let out = super::map(
            &items,
            8,
            || 0u32,
            |n, x| {
                *n += 1;
                (x % 3 != 0).then_some(x * 2)
            },
        );
        let want: Vec<u32> = (0..100).filter(|x| x % 3 != 0).map(|x| x * 2).collect();
        assert_eq!(out, want);
    }
}
