//! The console's address as a person types it, and as another device on the network reaches it: a gateway that
//! listens on every interface is reached through one of this machine's own addresses, never 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The URL to open on this machine: the listen address, with loopback for "every interface".
pub fn local_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    url(SocketAddr::new(ip, listen.port()))
}

/// The URL another device on the network opens, when the gateway listens beyond loopback: the listen address
/// itself, or for "every interface" the best of this machine's addresses (`interfaces`, see [`interface_ips`]).
pub fn lan_url(listen: SocketAddr, interfaces: &[IpAddr]) -> Option<String> {
    let ip = listen.ip();
    if ip.is_loopback() {
        return None;
    }
    if !ip.is_unspecified() {
        return Some(url(listen));
    }
    let best = interfaces
        .iter()
        .filter(|a| !a.is_loopback() && !a.is_unspecified() && (ip.is_ipv6() || a.is_ipv4()))
        .min_by_key(|a| preference(a))?;
    Some(url(SocketAddr::new(*best, listen.port())))
}

/// Lower is better: a private IPv4 network (a home or office LAN) first, then other IPv4, then IPv6 that is not
/// link-local (which would need a zone to be typed), then link-local.
fn preference(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) if v4.is_private() => 0,
        IpAddr::V4(v4) if v4.is_link_local() => 3,
        IpAddr::V4(_) => 1,
        IpAddr::V6(v6) if v6.is_unicast_link_local() => 4,
        IpAddr::V6(_) => 2,
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// The addresses of this machine's interfaces that are up (`getifaddrs`); nothing is sent anywhere.
pub fn interface_ips() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read, then free once with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut ips = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        let up = entry.ifa_flags & libc::IFF_UP as u32 != 0;
        if up && !entry.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr of the family it names.
            if let Some(ip) = unsafe { ip_of(entry.ifa_addr) } {
                ips.push(ip);
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    ips
}

/// # Safety
/// `addr` must point to a valid sockaddr whose size matches its family.
unsafe fn ip_of(addr: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller's promise: `addr` is a sockaddr of the size its family says.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let v4 = &*(addr as *const libc::sockaddr_in);
                Some(IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()))
            }
            libc::AF_INET6 => {
                let v6 = &*(addr as *const libc::sockaddr_in6);
                Some(IpAddr::from(v6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn every_interface_is_opened_locally_on_loopback() {
        assert_eq!(local_url(at("0.0.0.0:8080")), "http://127.0.0.1:8080/");
        assert_eq!(local_url(at("127.0.0.1:9000")), "http://127.0.0.1:9000/");
        assert_eq!(local_url(at("[::1]:80")), "http://[::1]:80/");
    }

    #[test]
    fn a_loopback_gateway_has_no_lan_address() {
        let here = ips(&["127.0.0.1", "192.168.1.20"]);
        assert_eq!(lan_url(at("127.0.0.1:8080"), &here), None);
        assert_eq!(lan_url(at("[::1]:8080"), &here), None);
    }

    #[test]
    fn every_interface_prefers_a_private_ipv4_address() {
        let here = ips(&[
            "127.0.0.1",
            "fe80::1",
            "2001:db8::5",
            "203.0.113.9",
            "10.1.2.3",
        ]);
        assert_eq!(
            lan_url(at("0.0.0.0:8080"), &here).as_deref(),
            Some("http://10.1.2.3:8080/")
        );
        let v6_only = ips(&["::1", "fe80::1", "2001:db8::5"]);
        assert_eq!(
            lan_url(at("0.0.0.0:8080"), &v6_only),
            None,
            "an IPv4 socket"
        );
        assert_eq!(
            lan_url(at("[::]:8080"), &v6_only).as_deref(),
            Some("http://[2001:db8::5]:8080/")
        );
        assert_eq!(lan_url(at("0.0.0.0:8080"), &ips(&["127.0.0.1"])), None);
    }

    #[test]
    fn a_named_address_is_its_own_lan_address() {
        assert_eq!(
            lan_url(at("192.168.7.7:8080"), &[]).as_deref(),
            Some("http://192.168.7.7:8080/")
        );
    }

    #[test]
    fn this_machine_has_loopback() {
        assert!(interface_ips().contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
