//! XEP-0082 date and time profiles in UTC, without a calendar dependency:
//! formatting (`CCYY-MM-DDThh:mm:ss.sssZ`) and parsing (with fractions and
//! `±hh:mm` offsets), on milliseconds since the Unix epoch.

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// XEP-0082 DateTime in UTC with milliseconds, e.g. `2026-11-28T17:41:29.123Z`.
pub fn format_datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn epoch_ms(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: i64) -> Option<i64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(
        (days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s.min(59))) * 1000
            + ms,
    )
}

/// XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss](Z|±hh:mm)`) to milliseconds
/// since the epoch.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once('T')?;
    let mut dp = date.split('-');
    let (y, mo, d) = (dp.next()?, dp.next()?, dp.next()?);
    if dp.next().is_some() || y.len() != 4 || mo.len() != 2 || d.len() != 2 {
        return None;
    }
    let (clock, offset_min) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0i64)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        if oh.len() != 2 || om.len() != 2 {
            return None;
        }
        (
            c,
            sign * (i64::from(digits(oh)?) * 60 + i64::from(digits(om)?)),
        )
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (clock, None),
    };
    let mut tp = hms.split(':');
    let (h, mi, sec) = (tp.next()?, tp.next()?, tp.next()?);
    if tp.next().is_some() || h.len() != 2 || mi.len() != 2 || sec.len() != 2 {
        return None;
    }
    let ms = match frac {
        None => 0,
        Some(f) => {
            digits(f)?;
            let mut f3: String = f.chars().take(3).collect();
            while f3.len() < 3 {
                f3.push('0');
            }
            i64::from(digits(&f3)?)
        }
    };
    let t = epoch_ms(
        i64::from(digits(y)?),
        digits(mo)?,
        digits(d)?,
        digits(h)?,
        digits(mi)?,
        digits(sec)?,
        ms,
    )?;
    Some(t - offset_min * 60_000)
}

/// [`format_datetime`] of a time given as seconds and milliseconds.
pub fn format_utc(secs: u64, millis: u32) -> String {
    format_datetime(
        i64::try_from(secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
            .saturating_add(i64::from(millis)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(1_798_479_689, 5), "2026-12-28T17:41:29.005Z");
        assert_eq!(format_utc(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_datetime(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for ms in [0, 1_798_479_689_005, 951_782_400_000, -86_400_000] {
            assert_eq!(parse_datetime(&format_datetime(ms)), Some(ms));
        }
        assert_eq!(
            parse_datetime("2026-12-02T02:31:40+02:00"),
            parse_datetime("2026-12-02T00:31:40Z")
        );
        assert_eq!(parse_datetime("2026-13-02T00:31:40Z"), None);
        assert_eq!(parse_datetime("yesterday"), None);
    }
}
