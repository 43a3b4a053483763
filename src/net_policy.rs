//! Outbound target policy: which webhook URLs and IP addresses deliveries may go to (pure, no I/O).
//!
//! Two call sites share these rules: subscription create/update (`validate_target_url`, literal IPs
//! and localhost-style names only, since DNS may be down) and the delivery resolver, which checks
//! every address a name actually resolves to with `forbidden_reason` (no DNS-rebinding bypass).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Longest target URL accepted, in characters (also applied to the normalized form).
pub const MAX_URL_LEN: usize = 2048;

const LOOPBACK: &str = "loopback address";
const PRIVATE: &str = "private address";
const LINK_LOCAL: &str = "link-local address";
const CGNAT: &str = "carrier-grade NAT address";
const MULTICAST: &str = "multicast address";
const UNSPECIFIED: &str = "unspecified address";
const BROADCAST: &str = "broadcast address";
const RESERVED: &str = "reserved address";

const PRIVATE_DISABLED: &str = "private targets are disabled on this server";

/// Why deliveries must not connect to `ip`, or `None` for an ordinary public address.
///
/// Covers loopback, private (RFC 1918, fc00::/7, deprecated fec0::/10), link-local (incl. the
/// 169.254.169.254 metadata endpoint), CGNAT, multicast, unspecified, broadcast and
/// reserved/documentation ranges. IPv6 forms that carry an IPv4 address (mapped, compatible,
/// SIIT-translated, NAT64 64:ff9b::/96, 6to4) are judged by the IPv4 address they carry, so
/// `::ffff:127.0.0.1` is refused like `127.0.0.1`.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        (0, _, _) => UNSPECIFIED,
        (127, _, _) => LOOPBACK,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => PRIVATE,
        (169, 254, _) => LINK_LOCAL,
        (100, 64..=127, _) => CGNAT,
        (224..=239, _, _) => MULTICAST,
        _ if ip.is_broadcast() => BROADCAST,
        // 240/4 (former class E), IETF protocol assignments, documentation and benchmarking nets:
        // nothing legitimate receives webhooks there, and some are routed internally.
        (240..=255, _, _)
        | (192, 0, 0)
        | (192, 0, 2)
        | (198, 18..=19, _)
        | (198, 51, 100)
        | (203, 0, 113) => RESERVED,
        _ => return None,
    };
    Some(reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some(UNSPECIFIED);
    }
    if ip.is_loopback() {
        return Some(LOOPBACK);
    }
    if let Some(v4) = embedded_ipv4(ip) {
        return v4_reason(v4);
    }
    let s = ip.segments();
    let reason = match s[0] {
        0xfc00..=0xfdff | 0xfec0..=0xfeff => PRIVATE,
        0xfe80..=0xfebf => LINK_LOCAL,
        0xff00..=0xffff => MULTICAST,
        // The rest of ::/8 (no embedded IPv4 form matched) has no unicast use.
        0x0000..=0x00ff => RESERVED,
        // 100::/64 discard-only, 2001:db8::/32 documentation.
        0x0100 if s[1..4] == [0, 0, 0] => RESERVED,
        0x2001 if s[1] == 0x0db8 => RESERVED,
        _ => return None,
    };
    Some(reason)
}

/// The IPv4 address an IPv6 address stands for, where the network would deliver it to that
/// IPv4 host (directly, or through a translator/relay that may sit inside our network).
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::a.b.c.d (compatible), ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d (SIIT)
        [0, 0, 0, 0, 0, 0, _, _] | [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        // 64:ff9b::a.b.c.d, the NAT64 well-known prefix
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 2002:aabb:ccdd::/48, 6to4
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// Whether `name` is a localhost-style host name (case-insensitive, one trailing dot tolerated).
fn is_localhost_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    matches!(name.as_str(), "localhost" | "localhost.localdomain" | "ip6-localhost" | "ip6-loopback")
        || name.ends_with(".localhost")
}

/// "a"/"an" + reason, for messages like "is a loopback address" / "is an unspecified address".
fn with_article(reason: &str) -> String {
    let article = if reason.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {reason}")
}

/// Checks a webhook target URL at subscription create/update time and returns it normalized.
///
/// Rules: at most [`MAX_URL_LEN`] characters; an absolute URL; scheme `https` (or `http` when
/// `allow_http`); a host; no user name or password; no fragment. Unless `allow_private_targets`,
/// literal IP hosts must pass [`forbidden_reason`] and localhost-style names are refused. Other
/// names are not resolved here: DNS may be down at creation, and the delivery resolver checks
/// the addresses actually connected to.
///
/// The error is a sentence naming the field `url`, fit for a 400 response.
pub fn validate_target_url(raw: &str, allow_http: bool, allow_private_targets: bool) -> Result<Url, String> {
    let too_long = || format!("url must be at most {MAX_URL_LEN} characters");
    // Count before parsing so oversized input is never parsed at all.
    if raw.chars().count() > MAX_URL_LEN {
        return Err(too_long());
    }
    let url = Url::parse(raw).map_err(|e| format!("url is not a valid absolute URL: {e}"))?;
    // Percent-encoding and IDNA can lengthen it; the normalized form is what gets stored.
    if url.as_str().len() > MAX_URL_LEN {
        return Err(too_long());
    }

    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err("url must use https (http is disabled on this server)".to_string()),
        other if allow_http => return Err(format!("url must use http or https, not {other}")),
        other => return Err(format!("url must use https, not {other}")),
    }

    let Some(host) = url.host() else {
        return Err("url must have a host".to_string());
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url must not contain a username or password".to_string());
    }
    if url.fragment().is_some() {
        return Err("url must not contain a fragment".to_string());
    }

    if !allow_private_targets {
        let ip = match host {
            Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            Host::Domain(name) if is_localhost_name(name) => {
                return Err(format!("url host {name} is a loopback name ({PRIVATE_DISABLED})"));
            }
            Host::Domain(_) => None,
        };
        if let Some(reason) = ip.and_then(forbidden_reason) {
            return Err(format!("url host {host} is {} ({PRIVATE_DISABLED})", with_article(reason)));
        }
    }

    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(ip: &str) -> Option<&'static str> {
        forbidden_reason(ip.parse().expect("test IP parses"))
    }

    #[test]
    fn ipv4_ranges() {
        let cases = [
            ("127.0.0.1", Some(LOOPBACK)),
            ("127.255.255.254", Some(LOOPBACK)),
            ("10.1.2.3", Some(PRIVATE)),
            ("172.16.0.1", Some(PRIVATE)),
            ("172.31.255.255", Some(PRIVATE)),
            ("192.168.1.1", Some(PRIVATE)),
            ("169.254.169.254", Some(LINK_LOCAL)),
            ("100.64.0.1", Some(CGNAT)),
            ("100.127.255.255", Some(CGNAT)),
            ("224.0.0.1", Some(MULTICAST)),
            ("239.255.255.250", Some(MULTICAST)),
            ("0.0.0.0", Some(UNSPECIFIED)),
            ("0.1.2.3", Some(UNSPECIFIED)),
            ("255.255.255.255", Some(BROADCAST)),
            ("240.0.0.1", Some(RESERVED)),
            ("192.0.2.1", Some(RESERVED)),
            ("198.18.0.1", Some(RESERVED)),
            ("203.0.113.9", Some(RESERVED)),
            // Public, including neighbours of the forbidden ranges.
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("169.253.255.255", None),
            ("192.169.0.1", None),
            ("11.0.0.1", None),
            ("223.255.255.255", None),
        ];
        for (ip, want) in cases {
            assert_eq!(reason(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_ranges() {
        let cases = [
            ("::1", Some(LOOPBACK)),
            ("::", Some(UNSPECIFIED)),
            ("fc00::1", Some(PRIVATE)),
            ("fd12:3456::1", Some(PRIVATE)),
            ("fec0::1", Some(PRIVATE)),
            ("fe80::1", Some(LINK_LOCAL)),
            ("febf::1", Some(LINK_LOCAL)),
            ("ff02::1", Some(MULTICAST)),
            ("2001:db8::1", Some(RESERVED)),
            ("100::1", Some(RESERVED)),
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("fbff::1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(reason(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_are_judged_by_the_ipv4_address() {
        let cases = [
            ("::ffff:127.0.0.1", Some(LOOPBACK)),
            ("::ffff:10.0.0.1", Some(PRIVATE)),
            ("::ffff:169.254.169.254", Some(LINK_LOCAL)),
            ("::ffff:100.64.0.1", Some(CGNAT)),
            ("::ffff:224.0.0.1", Some(MULTICAST)),
            ("::ffff:0.0.0.0", Some(UNSPECIFIED)),
            ("::ffff:255.255.255.255", Some(BROADCAST)),
            ("::127.0.0.1", Some(LOOPBACK)),
            ("::192.168.0.1", Some(PRIVATE)),
            ("::ffff:0:127.0.0.1", Some(LOOPBACK)),
            ("64:ff9b::10.0.0.1", Some(PRIVATE)),
            ("2002:7f00:1::1", Some(LOOPBACK)),
            ("2002:a9fe:a9fe::1", Some(LINK_LOCAL)),
            ("::ffff:8.8.8.8", None),
            ("::8.8.8.8", None),
            ("64:ff9b::8.8.8.8", None),
            ("2002:808:808::1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(reason(ip), want, "{ip}");
        }
    }

    fn err(raw: &str) -> String {
        validate_target_url(raw, false, false).expect_err(raw)
    }

    #[test]
    fn accepts_public_https_and_normalizes() {
        let url = validate_target_url("HTTPS://Example.COM/hook?a=1", false, false).unwrap();
        assert_eq!(url.as_str(), "https://example.com/hook?a=1");
        assert!(validate_target_url("https://8.8.8.8:8443/x", false, false).is_ok());
        assert!(validate_target_url("https://[2606:4700::1111]/", false, false).is_ok());
        // Names are not resolved at creation.
        assert!(validate_target_url("https://no-such-host.invalid/", false, false).is_ok());
    }

    #[test]
    fn length_limit() {
        let base = "https://example.com/";
        let ok = format!("{base}{}", "a".repeat(MAX_URL_LEN - base.len()));
        assert!(validate_target_url(&ok, false, false).is_ok());
        let long = format!("{ok}a");
        assert_eq!(err(&long), "url must be at most 2048 characters");
        // Within the limit as typed, over it once percent-encoded.
        let spaces = format!("{base}{}", " ".repeat(1000));
        assert_eq!(err(&format!("{spaces}x")), "url must be at most 2048 characters");
    }

    #[test]
    fn must_be_absolute() {
        assert!(err("/relative/path").starts_with("url is not a valid absolute URL: "));
        assert!(err("").starts_with("url is not a valid absolute URL: "));
        assert!(err("https://").starts_with("url is not a valid absolute URL: "));
        assert!(err("https://exa mple.com/").starts_with("url is not a valid absolute URL: "));
    }

    #[test]
    fn scheme_rules() {
        assert_eq!(err("http://example.com/"), "url must use https (http is disabled on this server)");
        assert!(validate_target_url("http://example.com/", true, false).is_ok());
        assert_eq!(err("ftp://example.com/"), "url must use https, not ftp");
        assert_eq!(
            validate_target_url("file:///etc/passwd", true, false).unwrap_err(),
            "url must use http or https, not file"
        );
    }

    #[test]
    fn no_credentials_or_fragment() {
        let creds = "url must not contain a username or password";
        assert_eq!(err("https://user@example.com/"), creds);
        assert_eq!(err("https://user:pw@example.com/"), creds);
        assert_eq!(err("https://:pw@example.com/"), creds);
        assert_eq!(err("https://example.com/#frag"), "url must not contain a fragment");
        assert_eq!(err("https://example.com/#"), "url must not contain a fragment");
    }

    #[test]
    fn literal_private_ips_refused_unless_allowed() {
        assert_eq!(
            err("https://127.0.0.1/"),
            "url host 127.0.0.1 is a loopback address (private targets are disabled on this server)"
        );
        assert_eq!(
            err("https://0.0.0.0/"),
            "url host 0.0.0.0 is an unspecified address (private targets are disabled on this server)"
        );
        assert_eq!(
            err("https://[::ffff:127.0.0.1]/"),
            "url host [::ffff:7f00:1] is a loopback address (private targets are disabled on this server)"
        );
        for raw in [
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/",
            "https://[::1]:8443/",
            "https://[fe80::1]/",
            "https://100.64.0.1/",
            "https://224.0.0.1/",
            "https://255.255.255.255/",
            // WHATWG parsing turns these spellings into 127.0.0.1.
            "https://2130706433/",
            "https://0x7f.1/",
            "https://127.1/",
            "https://127.0.0.1./",
        ] {
            assert!(err(raw).contains("(private targets are disabled on this server)"), "{raw}");
            assert!(validate_target_url(raw, false, true).is_ok(), "{raw}");
        }
    }

    #[test]
    fn localhost_names_refused_unless_allowed() {
        for raw in [
            "https://localhost/",
            "https://LOCALHOST:8080/",
            "https://localhost./",
            "https://api.localhost/",
            "https://a.b.LocalHost./",
            "https://localhost.localdomain/",
            "https://ip6-localhost/",
            "https://ip6-loopback/",
        ] {
            let e = err(raw);
            assert!(e.starts_with("url host ") && e.contains("is a loopback name"), "{raw}: {e}");
            assert!(validate_target_url(raw, false, true).is_ok(), "{raw}");
        }
        assert_eq!(
            err("https://localhost/"),
            "url host localhost is a loopback name (private targets are disabled on this server)"
        );
        // Only whole labels count.
        for raw in ["https://notlocalhost/", "https://localhost.example.com/", "https://mylocalhost.io/"] {
            assert!(validate_target_url(raw, false, false).is_ok(), "{raw}");
        }
    }
}
