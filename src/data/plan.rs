//! What a load fetches (data-load.md §1, §3): the missing ranges for each mode (what the coverage
//! index does not hold as complete), cut into
//! back-to-back segments no longer than IB's maximum span, leaving out segments in which the
//! market never trades, ordered newest first for `tail` and oldest first otherwise.

use serde::{Deserialize, Serialize};

use crate::data::calendar::{self, InstrumentKind};
use crate::data::coverage::{Coverage, Spans};
use crate::data::frame::to_timestamp;
use crate::data::request::Mode;
use crate::data::timeframe::Timeframe;

/// An inclusive range of Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// The ranges to fetch: whatever the mode's span needs that the coverage index does not hold as
/// complete. `tail` and `full` span `[start, end]` (a tail without a start date: from the first
/// cached bar), so holes and anything an earlier load left unfinished are fetched too. `backfill`
/// spans `[start, first cached bar)` and does not look for holes — but it does finish what an
/// earlier load planned in `[start, end]` and left incomplete, so that re-running an interrupted
/// backfill completes it rather than stopping at the part it had saved.
pub fn ranges(mode: Mode, cached: Option<Cached>, coverage: &Coverage, start: Option<i64>, end: i64) -> Vec<Window> {
    let missing = |w: Window| if w.start <= w.end { coverage.complete.missing_in(w) } else { Vec::new() };
    match mode {
        Mode::Local => Vec::new(),
        Mode::Tail | Mode::Full => match start.or(cached.map(|c| c.first)) {
            Some(lower) => missing(Window { start: lower, end }),
            None => Vec::new(),
        },
        Mode::Backfill => {
            let Some(start) = start else { return Vec::new() };
            let upper = cached.map_or(end, |c| (c.first - 1).min(end));
            let mut wanted = Spans::default();
            for w in missing(Window { start, end: upper }) {
                wanted.add(w);
            }
            for unfinished in coverage.incomplete.within(Window { start, end }) {
                for w in missing(unfinished) {
                    wanted.add(w);
                }
            }
            wanted.windows().to_vec()
        }
    }
}

/// Parts of `ranges` no segment covers: the market never trades there, so once planned they are
/// as complete as they will ever be.
pub fn closed_parts(ranges: &[Window], segments: &[Window]) -> Vec<Window> {
    let mut fetched = Spans::default();
    for s in segments {
        fetched.add(*s);
    }
    ranges.iter().flat_map(|r| fetched.missing_in(*r)).collect()
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
    use crate::data::repository::parse_ts;

    fn s(text: &str) -> i64 {
        parse_ts(text).unwrap()
    }

    fn w(a: &str, b: &str) -> Window {
        Window { start: s(a), end: s(b) }
    }

    /// A cache of February as a legacy file would be read: complete from the first bar to the end
    /// of the last bar's hour, but for an unexplained hole.
    fn february() -> (Option<Cached>, Coverage) {
        let cached = Cached { first: s("2024-02-01T14:30:00Z"), last: s("2024-02-29T20:30:00Z") };
        let mut coverage = Coverage::default();
        coverage.complete.add(w("2024-02-01T14:30:00Z", "2024-02-29T21:29:59Z"));
        coverage.complete.remove(w("2024-02-12T14:30:00Z", "2024-02-12T17:29:59Z"));
        (Some(cached), coverage)
    }

    #[test]
    fn each_mode_fetches_what_it_promises() {
        let (cached, coverage) = february();
        let (start, end) = (Some(s("2024-01-15T00:00:00Z")), s("2024-03-10T00:00:00Z"));
        let before = w("2024-01-15T00:00:00Z", "2024-02-01T14:29:59Z");
        let inside = w("2024-02-12T14:30:00Z", "2024-02-12T17:29:59Z");
        let after = w("2024-02-29T21:30:00Z", "2024-03-10T00:00:00Z");
        assert_eq!(ranges(Mode::Full, cached, &coverage, start, end), vec![before, inside, after]);
        assert_eq!(ranges(Mode::Tail, cached, &coverage, None, end), vec![inside, after]);
        assert_eq!(ranges(Mode::Backfill, cached, &coverage, start, end), vec![before]);
        assert!(ranges(Mode::Local, cached, &coverage, start, end).is_empty());
        let nothing = Coverage::default();
        assert_eq!(ranges(Mode::Backfill, None, &nothing, start, end), vec![Window { start: start.unwrap(), end }]);
    }

    #[test]
    fn a_backfill_finishes_what_an_interrupted_one_left_and_nothing_fetched_is_fetched_again() {
        // A backfill of January to March was cancelled after the first week of January.
        let (start, end) = (s("2024-01-01T00:00:00Z"), s("2024-03-31T23:59:59Z"));
        let mut coverage = Coverage::default();
        coverage.planned(Window { start, end });
        coverage.done(w("2024-01-01T00:00:00Z", "2024-01-07T23:59:59Z"));
        let cached = Some(Cached { first: s("2024-01-02T14:30:00Z"), last: s("2024-01-05T20:30:00Z") });
        let rest = w("2024-01-08T00:00:00Z", "2024-03-31T23:59:59Z");
        assert_eq!(ranges(Mode::Backfill, cached, &coverage, Some(start), end), vec![rest]);
        assert_eq!(ranges(Mode::Full, cached, &coverage, Some(start), end), vec![rest]);
        // Once done, a re-run fetches nothing, holidays and all.
        coverage.done(rest);
        assert!(ranges(Mode::Backfill, cached, &coverage, Some(start), end).is_empty());
        assert!(ranges(Mode::Full, cached, &coverage, Some(start), end).is_empty());
    }

    #[test]
    fn closed_parts_are_what_no_segment_covers() {
        let range = [w("2024-01-05T00:00:00Z", "2024-01-08T23:59:59Z")];
        let segments = segments(&range, Timeframe::M1, InstrumentKind::Stock, Mode::Full);
        assert_eq!(closed_parts(&range, &segments), vec![w("2024-01-06T00:00:00Z", "2024-01-07T23:59:59Z")]);
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
