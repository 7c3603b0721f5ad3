//! Deterministic synthetic market data for the IB simulator: the same (symbol, timeframe,
//! timestamp) always gives the same bar, whatever window it is asked in — prices are a smooth
//! function of time (a few symbol-seeded waves) plus per-bar hashed noise, so no state or
//! history is needed — and bars exist only when the instrument's market trades.

use std::f64::consts::TAU;

use crate::data::calendar::{self, InstrumentKind};
use crate::data::timeframe::Timeframe;
use crate::hosts::ib::Bar;
use crate::time::Timestamp;

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fast, well-distributed, portable hash step.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// [0, 1)
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn seed_of(symbol: &str) -> u64 {
    symbol.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| mix(h ^ u64::from(b)))
}

/// The synthetic market of one symbol.
pub struct Instrument {
    pub symbol: String,
    pub kind: InstrumentKind,
    seed: u64,
    base: f64,
    decimals: i32,
}

impl Instrument {
    pub fn new(symbol: &str) -> Self {
        let symbol = symbol.to_ascii_uppercase();
        let kind = calendar::instrument_kind(&symbol);
        let seed = seed_of(&symbol);
        let (base, decimals) = match kind {
            InstrumentKind::Stock => (20.0 + (seed % 480) as f64, 2),
            InstrumentKind::Forex if symbol.replace('.', "").ends_with("JPY") => (100.0 + (seed % 60) as f64, 3),
            InstrumentKind::Forex => (0.6 + (seed % 100) as f64 / 100.0, 5),
        };
        Self { symbol, kind, seed, base, decimals }
    }

    /// The price at a moment: slow and fast waves with symbol-seeded phases, and a little noise.
    fn price(&self, seconds: i64) -> f64 {
        let days = seconds as f64 / 86_400.0;
        let phase = |i: u64| unit(mix(self.seed ^ i)) * TAU;
        let waves = 0.25 * (TAU * days / 365.0 + phase(1)).sin()
            + 0.08 * (TAU * days / 29.0 + phase(2)).sin()
            + 0.02 * (TAU * days / 3.0 + phase(3)).sin();
        let noise = (unit(mix(self.seed ^ (seconds as u64).wrapping_mul(0x2545_F491_4F6C_DD1D))) - 0.5) * 0.004;
        self.base * (waves + noise).exp()
    }

    fn round(&self, x: f64) -> f64 {
        let scale = 10f64.powi(self.decimals);
        (x * scale).round() / scale
    }

    /// The bar starting at `ts` (which must be a bar time of this instrument's calendar).
    pub fn bar(&self, timeframe: Timeframe, ts: Timestamp) -> Bar {
        let start = ts.timestamp();
        let end = timeframe.next_bar(ts).timestamp();
        let open = self.round(self.price(start));
        let close = self.round(self.price(end));
        let wick = |salt: u64| unit(mix(self.seed ^ (start as u64) ^ salt)) * 0.003;
        let high = self.round(open.max(close) * (1.0 + wick(0xA5A5))).max(open.max(close));
        let low = self.round(open.min(close) * (1.0 - wick(0x5A5A))).min(open.min(close));
        let minutes = ((end - start) / 60).max(1) as f64;
        let volume = ((0.5 + unit(mix(self.seed ^ (start as u64) ^ 0x7777))) * 1_000.0 * minutes).round();
        Bar { timestamp: ts, open, high, low, close, volume }
    }

    /// Every bar in `[start, end]`.
    pub fn bars(&self, timeframe: Timeframe, start: Timestamp, end: Timestamp) -> Vec<Bar> {
        calendar::bar_times(self.kind, timeframe, start, end).into_iter().map(|ts| self.bar(timeframe, ts)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_timestamp;

    fn t(text: &str) -> Timestamp {
        parse_timestamp(text).unwrap()
    }

    #[test]
    fn bars_are_identical_across_overlapping_windows_and_valid() {
        let aapl = Instrument::new("AAPL");
        let a = aapl.bars(Timeframe::H1, t("2024-01-01T00:00:00Z"), t("2024-01-20T00:00:00Z"));
        let b = aapl.bars(Timeframe::H1, t("2024-01-10T00:00:00Z"), t("2024-01-31T00:00:00Z"));
        let overlap: Vec<_> = a.iter().filter(|x| x.timestamp >= t("2024-01-10T00:00:00Z")).cloned().collect();
        assert!(!overlap.is_empty());
        assert_eq!(overlap, b[..overlap.len()].to_vec());
        for bar in a.iter().chain(&b) {
            assert!(bar.low <= bar.open.min(bar.close) && bar.open.max(bar.close) <= bar.high, "{bar:?}");
            assert!(bar.volume >= 0.0 && bar.low > 0.0);
        }
        let eur = Instrument::new("EURUSD").bar(Timeframe::H1, t("2024-01-08T03:00:00Z"));
        assert!(eur.close > 0.3 && eur.close < 3.0, "{eur:?}");
    }
}
