//! Wall-clock times as text: the one civil-date conversion the doors'
//! timestamp formats (the dashboard's `...Z`, the room signaling and
//! coordinator servers' Python `isoformat()`s) are built on.

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS` (UTC, no fraction, no zone); each
/// format appends its own.
pub fn iso_seconds(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_and_times() {
        assert_eq!(iso_seconds(0), "1970-01-01T00:00:00");
        assert_eq!(iso_seconds(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(iso_seconds(4_102_444_799), "2099-12-31T23:59:59");
    }
}
