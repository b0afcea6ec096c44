//! XEP-0202: Entity Time of the server (always reported in UTC).

use minidom::Element;
use palaver_proto::ns;
use palaver_server::{HostSetup, ModuleDef};

/// `mod_time`.
pub const MODULE: ModuleDef = ModuleDef {
    name: "mod_time",
    start,
};

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {}

fn start(host: &mut HostSetup, opts: &serde_json::Value) -> Result<(), String> {
    palaver_server::module::parse_options::<Options>(opts)?;
    host.add_feature(ns::TIME);
    host.on_iq_get(ns::TIME, |_req| async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Some(
            Element::builder("time", ns::TIME)
                .append(Element::builder("tzo", ns::TIME).append("+00:00"))
                .append(
                    Element::builder("utc", ns::TIME)
                        .append(format_utc(now.as_secs(), now.subsec_millis())),
                )
                .build(),
        ))
    });
    Ok(())
}

/// XEP-0082 DateTime in UTC, e.g. `2026-11-28T17:41:29.123Z`.
pub fn format_utc(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
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

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_utc(1_798_479_689, 5),
            "2026-12-28T17:41:29.005Z"
        );
        assert_eq!(
            super::format_utc(951_782_400, 0),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
