//! The service's frame of bars: columnar, sorted by time, unique timestamps (Unix seconds).
//! Merging keeps the newest copy of a re-fetched bar.

use crate::hosts::ib::Bar;
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bars {
    pub ts: Vec<i64>,
    pub open: Vec<f64>,
    pub high: Vec<f64>,
    pub low: Vec<f64>,
    pub close: Vec<f64>,
    pub volume: Vec<f64>,
}

pub fn to_timestamp(seconds: i64) -> Timestamp {
    time::from_micros(seconds.saturating_mul(1_000_000))
}

impl Bars {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ts: Vec::with_capacity(n),
            open: Vec::with_capacity(n),
            high: Vec::with_capacity(n),
            low: Vec::with_capacity(n),
            close: Vec::with_capacity(n),
            volume: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub fn push(&mut self, ts: i64, o: f64, h: f64, l: f64, c: f64, v: f64) {
        self.ts.push(ts);
        self.open.push(o);
        self.high.push(h);
        self.low.push(l);
        self.close.push(c);
        self.volume.push(v);
    }

    fn push_from(&mut self, other: &Bars, i: usize) {
        self.push(other.ts[i], other.open[i], other.high[i], other.low[i], other.close[i], other.volume[i]);
    }

    pub fn first(&self) -> Option<Timestamp> {
        self.ts.first().map(|s| to_timestamp(*s))
    }

    pub fn last(&self) -> Option<Timestamp> {
        self.ts.last().map(|s| to_timestamp(*s))
    }

    /// From host bars (any order, possibly repeated).
    pub fn from_bars(bars: &[Bar]) -> Bars {
        let mut sorted: Vec<&Bar> = bars.iter().collect();
        sorted.sort_by_key(|b| b.timestamp);
        let mut out = Bars::with_capacity(sorted.len());
        for b in sorted {
            let ts = b.timestamp.timestamp();
            if out.ts.last() == Some(&ts) {
                out.truncate(out.len() - 1);
            }
            out.push(ts, b.open, b.high, b.low, b.close, b.volume);
        }
        out
    }

    fn truncate(&mut self, n: usize) {
        self.ts.truncate(n);
        self.open.truncate(n);
        self.high.truncate(n);
        self.low.truncate(n);
        self.close.truncate(n);
        self.volume.truncate(n);
    }

    /// Sorts (stably) and removes repeated timestamps, keeping the last copy of each. Files
    /// written by this service are already clean; files from elsewhere may not be.
    pub fn normalize(self) -> Bars {
        if self.ts.windows(2).all(|w| w[0] < w[1]) {
            return self;
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|i| self.ts[*i]);
        let mut out = Bars::with_capacity(self.len());
        for (k, &i) in order.iter().enumerate() {
            if order.get(k + 1).is_some_and(|&j| self.ts[j] == self.ts[i]) {
                continue;
            }
            out.push_from(&self, i);
        }
        out
    }

    /// Both frames merged in time order; where both have a bar, `newer`'s wins.
    pub fn merge(&self, newer: &Bars) -> Bars {
        let mut out = Bars::with_capacity(self.len() + newer.len());
        let (mut i, mut j) = (0, 0);
        while i < self.len() || j < newer.len() {
            match (self.ts.get(i), newer.ts.get(j)) {
                (Some(a), Some(b)) if a < b => {
                    out.push_from(self, i);
                    i += 1;
                }
                (Some(a), Some(b)) if a == b => {
                    out.push_from(newer, j);
                    i += 1;
                    j += 1;
                }
                (Some(_), None) => {
                    out.push_from(self, i);
                    i += 1;
                }
                _ => {
                    out.push_from(newer, j);
                    j += 1;
                }
            }
        }
        out
    }

    /// The rows with `start <= ts <= end`, then at most the last `limit` of them.
    pub fn window(&self, start: Option<i64>, end: Option<i64>, limit: Option<usize>) -> std::ops::Range<usize> {
        let from = start.map_or(0, |s| self.ts.partition_point(|t| *t < s));
        let to = end.map_or(self.len(), |e| self.ts.partition_point(|t| *t <= e));
        let from = match limit {
            Some(limit) if to.saturating_sub(from) > limit => to - limit,
            _ => from,
        };
        from..to.max(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(rows: &[(i64, f64)]) -> Bars {
        let mut b = Bars::default();
        for (t, p) in rows {
            b.push(*t, *p, *p, *p, *p, 1.0);
        }
        b
    }

    #[test]
    fn merging_keeps_order_and_the_newer_copy() {
        let old = frame(&[(1, 1.0), (3, 3.0), (5, 5.0)]);
        let new = frame(&[(2, 20.0), (3, 30.0), (6, 60.0)]);
        let merged = old.merge(&new);
        assert_eq!(merged.ts, vec![1, 2, 3, 5, 6]);
        assert_eq!(merged.close, vec![1.0, 20.0, 30.0, 5.0, 60.0]);
    }

    #[test]
    fn normalizing_sorts_and_keeps_the_last_duplicate() {
        let messy = frame(&[(3, 3.0), (1, 1.0), (3, 33.0), (2, 2.0)]);
        let clean = messy.normalize();
        assert_eq!(clean.ts, vec![1, 2, 3]);
        assert_eq!(clean.close, vec![1.0, 2.0, 33.0]);
    }

    #[test]
    fn windows_select_by_time_then_limit_the_most_recent() {
        let f = frame(&[(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]);
        assert_eq!(f.window(Some(2), Some(3), None), 1..3);
        assert_eq!(f.window(None, None, Some(2)), 2..4);
        assert_eq!(f.window(Some(5), None, None), 4..4);
    }
}
