//! What a load fetches (data-load.md §1, §3): the missing ranges for each mode, cut into
//! back-to-back segments no longer than IB's maximum span, leaving out segments in which the
//! market never trades, ordered newest first for `tail` and oldest first otherwise.

use serde::Serialize;

use crate::data::calendar::{self, InstrumentKind};
use crate::data::frame::to_timestamp;
use crate::data::gaps::Gap;
use crate::data::request::Mode;
use crate::data::timeframe::Timeframe;

/// An inclusive range of Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// The cached series' first and last bar, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    pub first: i64,
    pub last: i64,
}

/// The ranges to fetch. `start` is `None` only for a tail without a start date, whose holes are
/// then looked for in the whole cache.
pub fn ranges(
    mode: Mode,
    cached: Option<Cached>,
    holes: &[Gap],
    start: Option<i64>,
    end: i64,
    timeframe: Timeframe,
) -> Vec<Window> {
    let Some(cached) = cached else {
        return match (mode, start) {
            (Mode::Local, _) | (_, None) => Vec::new(),
            (_, Some(start)) if start <= end => vec![Window { start, end }],
            _ => Vec::new(),
        };
    };
    let mut out = Vec::new();
    let before = |out: &mut Vec<Window>| {
        if let Some(start) = start
            && start < cached.first
        {
            out.push(Window { start, end: (cached.first - 1).min(end) });
        }
    };
    let lower = start.unwrap_or(i64::MIN);
    let inside = |out: &mut Vec<Window>| {
        for hole in holes.iter().filter(|h| h.class.is_fetched()) {
            let window = Window { start: hole.start.max(lower), end: (hole.end - 1).min(end) };
            if window.start <= window.end {
                out.push(window);
            }
        }
    };
    let after = |out: &mut Vec<Window>| {
        let next = timeframe.next_bar(to_timestamp(cached.last)).timestamp();
        if next <= end {
            out.push(Window { start: next.max(lower), end });
        }
    };
    match mode {
        Mode::Local => {}
        Mode::Backfill => before(&mut out),
        Mode::Tail | Mode::Full => {
            before(&mut out);
            inside(&mut out);
            after(&mut out);
        }
    }
    out.retain(|w| w.start <= w.end);
    out
}

/// Cuts `ranges` into segments of at most IB's span, dropping those in which the market is
/// closed throughout; newest first for `tail`, oldest first otherwise.
pub fn segments(ranges: &[Window], timeframe: Timeframe, kind: InstrumentKind, mode: Mode) -> Vec<Window> {
    let span = timeframe.max_span().num_seconds();
    let mut out = Vec::new();
    for range in ranges {
        let mut start = range.start;
        while start <= range.end {
            let end = start.saturating_add(span - 1).min(range.end);
            if calendar::first_bar_time(kind, timeframe, to_timestamp(start), to_timestamp(end)).is_some() {
                out.push(Window { start, end });
            }
            start = end + 1;
        }
    }
    out.sort_by_key(|w| w.start);
    if mode == Mode::Tail {
        out.reverse();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::gaps::GapClass;
    use crate::data::repository::parse_ts;

    fn s(text: &str) -> i64 {
        parse_ts(text).unwrap()
    }

    fn w(a: &str, b: &str) -> Window {
        Window { start: s(a), end: s(b) }
    }

    #[test]
    fn each_mode_fetches_what_it_promises() {
        let cached = Some(Cached { first: s("2024-02-01T14:30:00Z"), last: s("2024-02-29T20:30:00Z") });
        let hole =
            Gap { start: s("2024-02-12T14:30:00Z"), end: s("2024-02-12T17:30:00Z"), class: GapClass::Unexpected };
        let closed =
            Gap { start: s("2024-02-16T21:30:00Z"), end: s("2024-02-20T14:30:00Z"), class: GapClass::ExpectedHoliday };
        let holes = [hole, closed];
        let (start, end) = (Some(s("2024-01-15T00:00:00Z")), s("2024-03-10T00:00:00Z"));
        let tf = Timeframe::H1;
        let before = w("2024-01-15T00:00:00Z", "2024-02-01T14:29:59Z");
        let inside = w("2024-02-12T14:30:00Z", "2024-02-12T17:29:59Z");
        let after = w("2024-02-29T21:30:00Z", "2024-03-10T00:00:00Z");
        assert_eq!(ranges(Mode::Full, cached, &holes, start, end, tf), vec![before, inside, after]);
        assert_eq!(ranges(Mode::Tail, cached, &holes, None, end, tf), vec![inside, after]);
        assert_eq!(ranges(Mode::Backfill, cached, &holes, start, end, tf), vec![before]);
        assert!(ranges(Mode::Local, cached, &holes, start, end, tf).is_empty());
        assert_eq!(ranges(Mode::Backfill, None, &[], start, end, tf), vec![Window { start: start.unwrap(), end }]);
    }

    #[test]
    fn segments_respect_the_span_skip_closed_markets_and_follow_the_mode_order() {
        // A week of 1-minute bars: one-day segments, none for the weekend.
        let range = [w("2024-01-01T00:00:00Z", "2024-01-07T23:59:59Z")];
        let full = segments(&range, Timeframe::M1, InstrumentKind::Stock, Mode::Full);
        assert_eq!(full.len(), 4, "Monday 1 January is a holiday; Saturday and Sunday are closed");
        assert_eq!(full[0], w("2024-01-02T00:00:00Z", "2024-01-02T23:59:59Z"));
        for pair in full.windows(2) {
            assert!(pair[0].end < pair[1].start, "back to back, no overlap");
        }
        let tail = segments(&range, Timeframe::M1, InstrumentKind::Stock, Mode::Tail);
        assert_eq!(tail.first(), full.last(), "tail fetches newest first");
        let fx = segments(&range, Timeframe::M1, InstrumentKind::Forex, Mode::Full);
        assert_eq!(fx.len(), 6, "forex opens Sunday evening");
    }
}
