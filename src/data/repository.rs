//! The CSV cache (data-load.md §5), shared with the training host: one file per series,
//! `{data_dir}/{SYMBOL}_{tf}.csv`, header `timestamp,open,high,low,close,volume`, UTC times
//! spelled `2024-01-02T14:30:00Z`. Read and written with polars (the time column is read as text
//! and parsed by a fixed-format parser — far faster than generic date inference). Writes are
//! atomic: a temp file in the same folder, fsync, rename (loads of one series are serialised by
//! `series_lock.rs`). Recently read frames are kept in memory while their file is unchanged. Each
//! series' coverage index (`coverage.rs`) lives beside its file.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use polars::prelude::*;
use serde::Serialize;

use crate::data::coverage::{self, Coverage};
use crate::data::frame::Bars;
use crate::data::request::{Symbol, file_name};
use crate::data::timeframe::Timeframe;
use crate::time;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("the cached file {file} is unreadable: {reason}; move it aside or repair it")]
    Unreadable { file: String, reason: String },
    #[error("could not write {file}: {reason}")]
    Write { file: String, reason: String },
    #[error("could not list the data folder: {0}")]
    List(String),
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
}

/// Unix seconds of `YYYY-MM-DD[T| ]HH:MM:SS[.fff][Z|±HH:MM|±HHMM]` or `YYYY-MM-DD`; anything
/// else goes through the general parser.
pub fn parse_ts(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let date_ok = b.len() >= 10 && b[4] == b'-' && b[7] == b'-';
    if date_ok && b.len() >= 19 && matches!(b[10], b'T' | b' ') && b[13] == b':' && b[16] == b':' {
        let days = days_from_civil(digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
        let secs = digits(&b[11..13])? * 3600 + digits(&b[14..16])? * 60 + digits(&b[17..19])?;
        let mut rest = &b[19..];
        if let Some(fraction) = rest.strip_prefix(b".") {
            let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            rest = &fraction[n..];
        }
        let offset = match rest {
            [] | [b'Z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
                let minutes = digits(&[*h1, *h2])? * 60 + digits(&[*m1, *m2])?;
                if *sign == b'+' { minutes * 60 } else { -minutes * 60 }
            }
            _ => return time::parse_timestamp(text).map(|t| t.timestamp()),
        };
        return Some(days * 86_400 + secs - offset);
    }
    if date_ok && b.len() == 10 {
        return Some(days_from_civil(digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?) * 86_400);
    }
    time::parse_timestamp(text).map(|t| t.timestamp())
}

/// Appends `YYYY-MM-DDTHH:MM:SSZ` (20 bytes).
pub fn push_ts(seconds: i64, out: &mut String) {
    let (y, m, d) = civil_from_days(seconds.div_euclid(86_400));
    let s = seconds.rem_euclid(86_400);
    let (hh, mm, ss) = (s / 3600, s / 60 % 60, s % 60);
    let _ = write!(StringWriter(out), "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z");
}

struct StringWriter<'a>(&'a mut String);

impl std::io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push_str(std::str::from_utf8(buf).map_err(std::io::Error::other)?);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PRICE_COLUMNS: [&str; 5] = ["open", "high", "low", "close", "volume"];

/// Reads a cache file: the first column is the time (whatever its name — ktrdr files say `date`
/// or nothing), then `open, high, low, close, volume` by name, any case.
pub fn read_csv(path: &Path) -> Result<Bars, String> {
    let mut dtypes = vec![DataType::String];
    dtypes.extend(std::iter::repeat_n(DataType::Float64, 5));
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_dtype_overwrite(Some(Arc::new(dtypes)))
        .with_rechunk(true)
        .try_into_reader_with_file_path(Some(path.to_owned()))
        .map_err(|e| e.to_string())?
        .finish()
        .map_err(|e| e.to_string())?;
    let columns = df.columns();
    let Some(time_column) = columns.first() else {
        return Ok(Bars::default());
    };
    let times = time_column.str().map_err(|e| format!("the time column: {e}"))?;
    let mut prices = Vec::with_capacity(5);
    for name in PRICE_COLUMNS {
        let column = columns
            .iter()
            .skip(1)
            .find(|c| c.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("it has no `{name}` column"))?
            .cast(&DataType::Float64)
            .map_err(|e| format!("column `{name}`: {e}"))?;
        prices.push(column);
    }
    let series: Vec<&Float64Chunked> =
        prices.iter().map(|c| c.f64()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let mut bars = Bars::with_capacity(df.height());
    let mut iters: Vec<_> = series.iter().map(|s| s.iter()).collect();
    for (row, text) in times.iter().enumerate() {
        let values: Vec<Option<f64>> = iters.iter_mut().map(|it| it.next().flatten()).collect();
        let Some(text) = text else { continue };
        let ts = parse_ts(text).ok_or_else(|| format!("row {}: `{text}` is not a timestamp", row + 2))?;
        let (Some(o), Some(h), Some(l), Some(c)) = (values[0], values[1], values[2], values[3]) else {
            continue;
        };
        bars.push(ts, o, h, l, c, values[4].unwrap_or(0.0));
    }
    Ok(bars.normalize())
}

/// Writes `bars` to `path` atomically (see [`write_atomic`]).
pub fn write_csv_atomic(path: &Path, bars: &Bars) -> Result<u64, String> {
    write_atomic(path, |writer| {
        let n = bars.len();
        let mut text = String::with_capacity(n * 20);
        for ts in &bars.ts {
            push_ts(*ts, &mut text);
        }
        let times = StringChunked::from_iter_values("timestamp".into(), (0..n).map(|i| &text[i * 20..(i + 1) * 20]));
        let mut columns = vec![times.into_column()];
        for (name, values) in PRICE_COLUMNS.iter().zip([&bars.open, &bars.high, &bars.low, &bars.close, &bars.volume]) {
            columns.push(Column::new((*name).into(), values.as_slice()));
        }
        let mut df = DataFrame::new(n, columns).map_err(|e| e.to_string())?;
        CsvWriter::new(writer).include_header(true).finish(&mut df).map_err(|e| e.to_string())
    })
}

/// Writes a file atomically: `fill` writes a temp file beside it, which is fsynced and renamed
/// over `path`, then the folder is fsynced. A reader (or a crash) sees the old file or the new
/// one, never half of one. Returns the size written.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), String>) -> Result<u64, String> {
    let dir = path.parent().ok_or("no parent folder")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).ok_or("bad file name")?;
    let temp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let file = File::create(&temp).map_err(|e| e.to_string())?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        std::fs::rename(&temp, path).map_err(|e| e.to_string())?;
        if let Ok(folder) = File::open(dir) {
            let _ = folder.sync_all();
        }
        Ok(size)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// What `GET /data/info` lists per cached series.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SeriesInfo {
    pub symbol: String,
    pub timeframe: String,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub point_count: u64,
    pub file_size_bytes: u64,
}

/// First and last bar and the row count, from the raw text (no full parse).
fn scan(path: &Path) -> Result<(Option<i64>, Option<i64>, u64), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    lines.next(); // header
    let stamp = |line: &str| parse_ts(line.split(',').next().unwrap_or_default().trim());
    let mut count = 0u64;
    let mut first = None;
    let mut last_line = None;
    for line in lines {
        if count == 0 {
            first = stamp(line);
        }
        count += 1;
        last_line = Some(line);
    }
    Ok((first, last_line.and_then(stamp), count))
}

/// Frames read recently, reused while their file is unchanged; bounded by total rows.
#[derive(Default)]
struct FrameCache {
    entries: Vec<(PathBuf, SystemTime, u64, Arc<Bars>)>,
}

impl FrameCache {
    fn get(&mut self, path: &Path, modified: SystemTime, len: u64) -> Option<Arc<Bars>> {
        let at = self.entries.iter().position(|(p, m, l, _)| p == path && *m == modified && *l == len)?;
        let entry = self.entries.remove(at);
        let bars = entry.3.clone();
        self.entries.push(entry);
        Some(bars)
    }

    fn put(&mut self, path: PathBuf, modified: SystemTime, len: u64, bars: Arc<Bars>, max_rows: usize) {
        self.entries.retain(|(p, ..)| *p != path);
        if bars.len() > max_rows {
            return;
        }
        self.entries.push((path, modified, len, bars));
        while self.entries.iter().map(|e| e.3.len()).sum::<usize>() > max_rows {
            self.entries.remove(0);
        }
    }
}

/// The cache folder.
pub struct Repository {
    dir: PathBuf,
    frames: Mutex<FrameCache>,
    /// One parse per file at a time: concurrent readers of a file wait for the first and share
    /// its frame, instead of each holding a copy of a large series while parsing.
    parsing: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    max_cached_rows: usize,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Repository {
    pub fn new(dir: PathBuf, max_cached_rows: usize) -> Self {
        Self { dir, frames: Mutex::new(FrameCache::default()), parsing: Mutex::default(), max_cached_rows }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a series (the symbol is validated, so this stays inside the folder).
    pub fn path(&self, symbol: &Symbol, timeframe: Timeframe) -> PathBuf {
        self.dir.join(file_name(symbol, timeframe))
    }

    /// The coverage index of a series, beside its file.
    pub fn coverage_path(&self, symbol: &Symbol, timeframe: Timeframe) -> PathBuf {
        self.dir.join(format!("{}_{}.coverage.json", symbol.as_str(), timeframe.as_str()))
    }

    /// The series' coverage index, if there is one and it describes `bars` (the CSV as read).
    pub async fn read_coverage(&self, symbol: &Symbol, timeframe: Timeframe, bars: Arc<Bars>) -> Option<Coverage> {
        let path = self.coverage_path(symbol, timeframe);
        tokio::task::spawn_blocking(move || {
            let json = std::fs::read(&path).ok()?;
            let coverage = coverage::decode(&json, &bars);
            if coverage.is_none() {
                tracing::info!(file = %path.display(), "coverage index does not match its CSV; rebuilt from the bars");
            }
            coverage
        })
        .await
        .ok()
        .flatten()
    }

    /// Writes the series' coverage index atomically, describing `bars` (the CSV as just written).
    /// Always after the CSV: the index never claims bars the file does not hold.
    pub async fn write_coverage(
        &self,
        symbol: &Symbol,
        timeframe: Timeframe,
        coverage: &Coverage,
        bars: &Bars,
    ) -> Result<(), CacheError> {
        let path = self.coverage_path(symbol, timeframe);
        let json = coverage::encode(coverage, bars);
        tokio::task::spawn_blocking(move || write_atomic(&path, |w| w.write_all(&json).map_err(|e| e.to_string())))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map(|_| ())
            .map_err(|reason| CacheError::Write {
                file: format!("{}_{}.coverage.json", symbol.as_str(), timeframe.as_str()),
                reason,
            })
    }

    /// The cached bars of a series (empty when there is no file). Parsing runs off the async threads.
    pub async fn read(&self, symbol: &Symbol, timeframe: Timeframe) -> Result<Arc<Bars>, CacheError> {
        let path = self.path(symbol, timeframe);
        if let Some(bars) = self.cached(&path) {
            return Ok(bars);
        }
        let turn = self.parsing.lock().entry(path.clone()).or_default().clone();
        let parsed = {
            let _turn = turn.lock().await;
            // Parsed meanwhile by the reader we waited for?
            match self.cached(&path) {
                Some(bars) => Ok(bars),
                None => self.parse(&path, symbol, timeframe).await,
            }
        };
        drop(turn);
        self.parsing.lock().retain(|_, turn| Arc::strong_count(turn) > 1);
        parsed
    }

    /// The file's frame from the cache while the file is unchanged; an empty frame for no file.
    fn cached(&self, path: &Path) -> Option<Arc<Bars>> {
        let Some((modified, len)) = file_stamp(path) else {
            return Some(Arc::new(Bars::default()));
        };
        self.frames.lock().get(path, modified, len)
    }

    async fn parse(&self, path: &Path, symbol: &Symbol, timeframe: Timeframe) -> Result<Arc<Bars>, CacheError> {
        let Some((modified, len)) = file_stamp(path) else {
            return Ok(Arc::new(Bars::default()));
        };
        let file = path.to_owned();
        let bars = tokio::task::spawn_blocking(move || read_csv(&file))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| CacheError::Unreadable { file: file_name(symbol, timeframe), reason })?;
        let bars = Arc::new(bars);
        self.frames.lock().put(path.to_owned(), modified, len, bars.clone(), self.max_cached_rows);
        Ok(bars)
    }

    /// Replaces the series' file atomically with `bars`.
    pub async fn write(&self, symbol: &Symbol, timeframe: Timeframe, bars: Arc<Bars>) -> Result<u64, CacheError> {
        let path = self.path(symbol, timeframe);
        let (file, frame) = (path.clone(), bars.clone());
        let size = tokio::task::spawn_blocking(move || write_csv_atomic(&file, &frame))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| CacheError::Write { file: file_name(symbol, timeframe), reason })?;
        if let Some((modified, len)) = file_stamp(&path) {
            self.frames.lock().put(path, modified, len, bars, self.max_cached_rows);
        }
        Ok(size)
    }

    /// Every cached series, sorted by symbol and timeframe.
    pub async fn info(&self) -> Result<Vec<SeriesInfo>, CacheError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(CacheError::List(e.to_string())),
            };
            let mut out = Vec::new();
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".csv") else { continue };
                let Some((symbol, timeframe)) = stem.rsplit_once('_') else { continue };
                if Symbol::parse(symbol).is_err() || Timeframe::parse(timeframe).is_none() || name.starts_with('.') {
                    continue;
                }
                let Ok((first, last, count)) = scan(&entry.path()) else { continue };
                let format = |s: Option<i64>| s.map(|s| time::format(&crate::data::frame::to_timestamp(s)));
                out.push(SeriesInfo {
                    symbol: symbol.to_owned(),
                    timeframe: timeframe.to_owned(),
                    start_date: format(first),
                    end_date: format(last),
                    point_count: count,
                    file_size_bytes: entry.metadata().map(|m| m.len()).unwrap_or(0),
                });
            }
            out.sort_by(|a, b| (&a.symbol, &a.timeframe).cmp(&(&b.symbol, &b.timeframe)));
            Ok(out)
        })
        .await
        .map_err(|e| CacheError::List(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_format_parser_agrees_with_the_general_one() {
        for text in [
            "2024-01-02T14:30:00Z",
            "2024-01-02 14:30:00",
            "2024-01-02T14:30:00.000Z",
            "2024-01-02 14:30:00+00:00",
            "2024-01-02T09:30:00-05:00",
            "1999-12-31T23:59:59Z",
            "2024-02-29",
        ] {
            assert_eq!(parse_ts(text), time::parse_timestamp(text).map(|t| t.timestamp()), "{text}");
        }
        assert_eq!(parse_ts("2024-01-02T14:30:00.123456+0000"), parse_ts("2024-01-02T14:30:00Z"));
        let mut out = String::new();
        push_ts(parse_ts("2024-02-29T23:05:09Z").unwrap(), &mut out);
        assert_eq!(out, "2024-02-29T23:05:09Z");
    }

    #[test]
    fn files_round_trip_and_ktrdr_headers_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("AAPL_1h.csv");
        let mut bars = Bars::default();
        bars.push(parse_ts("2024-01-02T14:30:00Z").unwrap(), 187.15, 188.44, 183.89, 185.64, 82488700.0);
        bars.push(parse_ts("2024-01-02T15:30:00Z").unwrap(), 185.6, 186.1, 185.0, 185.9, 1200.0);
        write_csv_atomic(&path, &bars).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().take(2).collect::<Vec<_>>(),
            vec!["timestamp,open,high,low,close,volume", "2024-01-02T14:30:00Z,187.15,188.44,183.89,185.64,82488700.0"]
        );
        assert_eq!(read_csv(&path).unwrap(), bars);
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        for header in ["date,open,high,low,close,volume", ",Open,High,Low,Close,Volume"] {
            let ktrdr = dir.path().join("K_1h.csv");
            std::fs::write(&ktrdr, format!("{header}\n2024-01-02 15:30:00+00:00,185.6,186.1,185.0,185.9,1200\n2024-01-02 14:30:00+00:00,187.15,188.44,183.89,185.64,82488700\n")).unwrap();
            assert_eq!(read_csv(&ktrdr).unwrap(), bars, "{header}");
        }
        let broken = dir.path().join("B_1h.csv");
        std::fs::write(&broken, "date,open,high,low,close,volume\nyesterday,1,2,3,4,5\n").unwrap();
        assert!(read_csv(&broken).unwrap_err().contains("yesterday"));
    }
}
