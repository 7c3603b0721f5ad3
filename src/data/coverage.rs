//! The coverage index of a cached series: which time ranges are known to be complete in its CSV
//! (fetched from the IB host to the end, or closed by the calendar) and which ranges a load
//! planned but did not finish. Gap analysis then tells "not fetched yet" from "no trading"
//! (holidays, halts, early closes) without guessing from bars, and a load interrupted halfway
//! leaves its unfinished part behind for the next load of the same request.
//!
//! Stored as `{SYMBOL}_{tf}.coverage.json` next to the CSV and always written after it, so it
//! never claims bars the CSV does not hold. It records the CSV's row count and first and last
//! bar: when the CSV changed behind our back (deleted, rewritten by another tool) the index no
//! longer matches and is rebuilt from the bars as if there were none.

use serde::{Deserialize, Serialize};

use crate::data::frame::{Bars, to_timestamp};
use crate::data::gaps::Gap;
use crate::data::plan::Window;
use crate::data::timeframe::Timeframe;
use crate::time;

/// Sorted, disjoint, non-adjacent inclusive ranges of Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans(Vec<Window>);

impl Spans {
    pub fn windows(&self) -> &[Window] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `w`, merging it with what it overlaps or touches.
    pub fn add(&mut self, w: Window) {
        if w.start > w.end {
            return;
        }
        let (mut start, mut end) = (w.start, w.end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &x in &self.0 {
            if x.end.saturating_add(1) < start {
                out.push(x);
            } else if end.saturating_add(1) < x.start {
                if !placed {
                    out.push(Window { start, end });
                    placed = true;
                }
                out.push(x);
            } else {
                start = start.min(x.start);
                end = end.max(x.end);
            }
        }
        if !placed {
            out.push(Window { start, end });
        }
        out.sort_by_key(|x| x.start);
        self.0 = out;
    }

    /// Takes `w` out.
    pub fn remove(&mut self, w: Window) {
        if w.start > w.end {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &x in &self.0 {
            if x.end < w.start || x.start > w.end {
                out.push(x);
                continue;
            }
            if x.start < w.start {
                out.push(Window { start: x.start, end: w.start - 1 });
            }
            if x.end > w.end {
                out.push(Window { start: w.end + 1, end: x.end });
            }
        }
        self.0 = out;
    }

    /// The parts of `w` these spans do not cover, in order.
    pub fn missing_in(&self, w: Window) -> Vec<Window> {
        let mut out = Vec::new();
        let mut from = w.start;
        for x in &self.0 {
            if x.end < from {
                continue;
            }
            if x.start > w.end {
                break;
            }
            if x.start > from {
                out.push(Window { start: from, end: x.start - 1 });
            }
            from = x.end.saturating_add(1);
            if from > w.end {
                return out;
            }
        }
        if from <= w.end {
            out.push(Window { start: from, end: w.end });
        }
        out
    }

    /// The parts of `w` these spans cover, in order.
    pub fn within(&self, w: Window) -> Vec<Window> {
        self.0
            .iter()
            .filter(|x| x.end >= w.start && x.start <= w.end)
            .map(|x| Window { start: x.start.max(w.start), end: x.end.min(w.end) })
            .collect()
    }
}

/// What is known about one series' CSV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Known complete in the CSV: fetched from the host to the end, or closed by the calendar.
    pub complete: Spans,
    /// Planned by a load that has not finished them (yet, or ever: cancelled, crashed, failed).
    pub incomplete: Spans,
}

impl Coverage {
    /// For a CSV without a (matching) index: its bars are taken as complete from the first to
    /// the end of the last bar's interval, except for `holes` (gaps worth fetching). With no bars,
    /// nothing is known.
    pub fn from_bars(bars: &Bars, holes: &[Gap], timeframe: Timeframe) -> Self {
        let mut complete = Spans::default();
        if let (Some(first), Some(last)) = (bars.ts.first(), bars.ts.last()) {
            let end = timeframe.next_bar(to_timestamp(*last)).timestamp() - 1;
            complete.add(Window { start: *first, end });
            for hole in holes.iter().filter(|h| h.class.is_fetched()) {
                complete.remove(Window { start: hole.start, end: hole.end - 1 });
            }
        }
        Coverage { complete, incomplete: Spans::default() }
    }

    /// A range was planned: it stays incomplete until [`done`](Self::done) says otherwise.
    pub fn planned(&mut self, w: Window) {
        let mut open = Spans::default();
        open.add(w);
        for done in self.complete.within(w) {
            open.remove(done);
        }
        for part in open.windows() {
            self.incomplete.add(*part);
        }
    }

    /// A range is now complete in the CSV.
    pub fn done(&mut self, w: Window) {
        self.complete.add(w);
        self.incomplete.remove(w);
    }

    /// What another writer of the same CSV recorded as complete is complete here too.
    pub fn absorb(&mut self, theirs: &Coverage) {
        for w in theirs.complete.windows() {
            self.done(*w);
        }
    }
}

/// The file's shape: readable by people, timestamps as text.
#[derive(Debug, Serialize, Deserialize)]
struct CoverageFile {
    /// The CSV this describes, as it was when this was written.
    rows: u64,
    first_bar: Option<String>,
    last_bar: Option<String>,
    complete: Vec<[String; 2]>,
    incomplete: Vec<[String; 2]>,
}

fn text(seconds: i64) -> String {
    time::format(&to_timestamp(seconds))
}

fn seconds(text: &str) -> Option<i64> {
    time::parse_timestamp(text).map(|t| t.timestamp())
}

fn spans_of(list: &[[String; 2]]) -> Option<Spans> {
    let mut spans = Spans::default();
    for [start, end] in list {
        spans.add(Window { start: seconds(start)?, end: seconds(end)? });
    }
    Some(spans)
}

/// The index as JSON, describing `bars` (the CSV as just written).
pub fn encode(coverage: &Coverage, bars: &Bars) -> Vec<u8> {
    let pairs = |s: &Spans| s.windows().iter().map(|w| [text(w.start), text(w.end)]).collect();
    let file = CoverageFile {
        rows: bars.len() as u64,
        first_bar: bars.ts.first().map(|s| text(*s)),
        last_bar: bars.ts.last().map(|s| text(*s)),
        complete: pairs(&coverage.complete),
        incomplete: pairs(&coverage.incomplete),
    };
    serde_json::to_vec_pretty(&file).expect("the coverage index serialises")
}

/// The index in `json` if it describes `bars` (the CSV as read now); `None` when it is unreadable
/// or the CSV is not the one it describes.
pub fn decode(json: &[u8], bars: &Bars) -> Option<Coverage> {
    let file: CoverageFile = serde_json::from_slice(json).ok()?;
    let matches = file.rows == bars.len() as u64
        && file.first_bar.as_deref().and_then(seconds) == bars.ts.first().copied()
        && file.last_bar.as_deref().and_then(seconds) == bars.ts.last().copied();
    if !matches {
        return None;
    }
    Some(Coverage { complete: spans_of(&file.complete)?, incomplete: spans_of(&file.incomplete)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: i64, end: i64) -> Window {
        Window { start, end }
    }

    fn spans(list: &[(i64, i64)]) -> Spans {
        let mut s = Spans::default();
        for (a, b) in list {
            s.add(w(*a, *b));
        }
        s
    }

    #[test]
    fn spans_merge_what_overlaps_or_touches_and_keep_the_rest_apart() {
        let s = spans(&[(10, 20), (30, 40), (21, 25), (0, 2), (38, 50)]);
        assert_eq!(s.windows(), &[w(0, 2), w(10, 25), w(30, 50)]);
        let mut t = s.clone();
        t.remove(w(12, 31));
        assert_eq!(t.windows(), &[w(0, 2), w(10, 11), w(32, 50)]);
        t.remove(w(0, 100));
        assert!(t.is_empty());
    }

    #[test]
    fn missing_and_covered_parts_of_a_range() {
        let s = spans(&[(10, 20), (30, 40)]);
        assert_eq!(s.missing_in(w(0, 50)), vec![w(0, 9), w(21, 29), w(41, 50)]);
        assert_eq!(s.missing_in(w(12, 18)), vec![]);
        assert_eq!(s.missing_in(w(15, 35)), vec![w(21, 29)]);
        assert_eq!(s.within(w(15, 35)), vec![w(15, 20), w(30, 35)]);
        assert_eq!(Spans::default().missing_in(w(1, 2)), vec![w(1, 2)]);
    }

    #[test]
    fn planned_ranges_stay_incomplete_until_done() {
        let mut c = Coverage { complete: spans(&[(0, 9)]), incomplete: Spans::default() };
        c.planned(w(5, 40));
        assert_eq!(c.incomplete.windows(), &[w(10, 40)], "what is complete is not planned again");
        c.done(w(10, 19));
        assert_eq!((c.complete.windows(), c.incomplete.windows()), (&[w(0, 19)][..], &[w(20, 40)][..]));
    }

    #[test]
    fn the_file_round_trips_only_for_the_csv_it_describes() {
        let bars = Bars::from_bars(&crate::sim::market::Instrument::new("AAPL").bars(
            Timeframe::H1,
            time::parse_timestamp("2024-01-02T00:00:00Z").unwrap(),
            time::parse_timestamp("2024-01-05T00:00:00Z").unwrap(),
        ));
        let c = Coverage { complete: spans(&[(1_704_153_600, 1_704_412_800)]), incomplete: spans(&[(0, 59)]) };
        let json = encode(&c, &bars);
        assert_eq!(decode(&json, &bars), Some(c.clone()));
        let fewer = Bars::from_bars(&[]);
        assert_eq!(decode(&json, &fewer), None, "the CSV changed: the index is not trusted");
        assert_eq!(decode(b"{not json", &bars), None);
    }
}
