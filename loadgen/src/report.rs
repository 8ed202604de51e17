//! Figures for the JSON summaries: latency histograms (microseconds), failure
//! counts by kind, rounding.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// Failure counts by kind.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<String, u64>>);

impl Failures {
    pub fn add(&self, kind: impl Into<String>) {
        *self
            .0
            .lock()
            .expect("failures lock")
            .entry(kind.into())
            .or_default() += 1;
    }
    pub fn total(&self) -> u64 {
        self.0.lock().expect("failures lock").values().sum()
    }
    pub fn json(&self) -> Value {
        json!(*self.0.lock().expect("failures lock"))
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_and_failures_as_json() {
        assert_eq!(hist_json(&new_hist()), json!({"count": 0}));
        let mut h = new_hist();
        for v in [100, 200, 300] {
            h.record(v).unwrap();
        }
        let j = hist_json(&h);
        assert_eq!(j["count"], json!(3));
        assert_eq!(j["max_us"], json!(300));
        let f = Failures::default();
        f.add("refused");
        f.add("refused");
        f.add(String::from("timeout"));
        assert_eq!(f.total(), 3);
        assert_eq!(f.json(), json!({"refused": 2, "timeout": 1}));
        assert_eq!(round2(1.23456), 1.23);
    }
}
