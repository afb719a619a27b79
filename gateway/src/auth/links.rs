//! Download links: a URL that fetches one of a job's files (or all of them as a tar archive) for a minute without
//! credentials, so a browser hands the download to its own download manager, streamed to disk, instead of holding
//! the file in a page's memory. The link carries a ticket, never the caller's key or token: an HMAC, under a key
//! derived from the fleet's sealing key (so any gateway verifies it), over the caller's principal, the exact path
//! and the expiry. A ticket opens that one path, for GET only, until it expires; at use the request is authorized
//! again as the principal it names (a revoked key's links die with it), by the checks every request gets.

use fleet_shared::seal::{hmac_sha256, same, Sealer};

/// How long a link works.
pub const LINK_SECS: i64 = 60;
const PURPOSE: &str = "fleet download links v1";

/// A ticket for `principal` to GET `path` until `expires` (Unix seconds): `EXPIRES-PRINCIPAL_HEX-MAC_HEX`, nothing
/// a URL needs to escape.
pub fn mint(sealer: &Sealer, principal: &str, path: &str, expires: i64) -> String {
    format!(
        "{expires}-{}-{}",
        hex::encode(principal),
        mac(sealer, principal, path, expires)
    )
}

/// The principal a ticket names, if it was made for `path` by this fleet and has not expired at `now`.
pub fn verify(sealer: &Sealer, ticket: &str, path: &str, now: i64) -> Option<String> {
    let mut parts = ticket.splitn(3, '-');
    let expires: i64 = parts.next()?.parse().ok()?;
    let principal = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
    let presented = parts.next()?;
    let genuine = same(&mac(sealer, &principal, path, expires), presented);
    (genuine && now < expires).then_some(principal)
}

/// The ticket of a request: its `ticket` query parameter.
pub fn presented(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
}

fn mac(sealer: &Sealer, principal: &str, path: &str, expires: i64) -> String {
    // NUL cannot occur in a principal or a path, so no two (principal, path, expiry) share a message.
    let message = format!("{principal}\0{path}\0{expires}");
    hex::encode(&hmac_sha256(&sealer.derived(PURPOSE), message.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/v1/jobs/0192/artifacts/out/report%20final.txt";

    #[test]
    fn a_ticket_opens_its_own_path_until_it_expires() {
        let sealer = Sealer::with_key([7; 32]);
        let ticket = mint(&sealer, "key:abc", PATH, 1_000);
        assert!(ticket.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        assert_eq!(
            verify(&sealer, &ticket, PATH, 999).as_deref(),
            Some("key:abc")
        );
        assert_eq!(verify(&sealer, &ticket, PATH, 1_000), None, "expired");
        assert_eq!(
            verify(&sealer, &ticket, "/v1/jobs/0192/artifacts.tar", 999),
            None
        );
        assert_eq!(
            verify(&Sealer::with_key([8; 32]), &ticket, PATH, 999),
            None,
            "another fleet's"
        );
    }

    #[test]
    fn a_changed_ticket_opens_nothing() {
        let sealer = Sealer::with_key([7; 32]);
        let ticket = mint(&sealer, "key:abc", PATH, 1_000);
        let (_, mac) = ticket.rsplit_once('-').unwrap();
        let longer = format!("2000-{}-{mac}", hex::encode("key:abc"));
        let someone_else = format!("1000-{}-{mac}", hex::encode("key:root"));
        for forged in [
            longer,
            someone_else,
            String::new(),
            "1000--".into(),
            "x-y-z".into(),
        ] {
            assert_eq!(verify(&sealer, &forged, PATH, 999), None, "{forged}");
        }
    }

    #[test]
    fn the_ticket_is_read_from_the_query() {
        assert_eq!(presented(Some("a=1&ticket=12-ab-cd")), Some("12-ab-cd"));
        assert_eq!(presented(Some("ticket=")), Some(""));
        assert_eq!(presented(Some("xticket=1")), None);
        assert_eq!(presented(None), None);
    }
}
