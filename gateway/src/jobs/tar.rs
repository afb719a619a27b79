//! A job's files as one POSIX tar archive (ustar, with PAX records for long names and huge sizes), streamed:
//! headers are computed up front with the `tar` crate's, so the archive's length is known before any file is read.

/// One 512-byte tar block.
const BLOCK: usize = 512;
/// Largest size the ustar header's 11 octal digits hold.
const USTAR_MAX_SIZE: u64 = 0o77_777_777_777;

/// The header blocks of a regular file `name` of `size` bytes (one block, or three and more with a PAX record).
pub fn file_header(name: &str, size: u64, mtime: u64) -> Vec<u8> {
    let mut header = ustar(size.min(USTAR_MAX_SIZE), mtime, tar::EntryType::Regular);
    let mut pax = String::new();
    if header.set_path(name).is_err() {
        pax.push_str(&pax_record("path", name));
        // Readers that ignore PAX see the end of the path. Safe names always fit once cut to 100 bytes.
        if let Err(e) = header.set_path(fallback_name(name)) {
            tracing::warn!(name, error = %e, "no ustar name for an archive entry; readers need its PAX path");
        }
    }
    if size > USTAR_MAX_SIZE {
        pax.push_str(&pax_record("size", &size.to_string()));
    }
    header.set_cksum();
    let mut out = Vec::with_capacity(BLOCK);
    if !pax.is_empty() {
        let mut extension = ustar(pax.len() as u64, mtime, tar::EntryType::XHeader);
        // A short fixed name: it always fits.
        let _ = extension.set_path("PaxHeader");
        extension.set_cksum();
        out.extend_from_slice(extension.as_bytes());
        out.extend(pax.as_bytes());
        out.resize(out.len() + padding(pax.len() as u64), 0);
    }
    out.extend_from_slice(header.as_bytes());
    out
}

fn ustar(size: u64, mtime: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime.min(USTAR_MAX_SIZE));
    h.set_entry_type(kind);
    h
}

/// Zero bytes after `size` bytes of content, to the next block boundary.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// The two zero blocks that end an archive.
pub const TRAILER: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// The ustar name shown by readers that ignore PAX: the end of the path, cut at a character boundary.
fn fallback_name(name: &str) -> &str {
    let mut start = name.len().saturating_sub(100);
    while !name.is_char_boundary(start) {
        start += 1;
    }
    name[start..].trim_start_matches('/')
}

/// `"<len> key=value\n"`, where len counts the whole record including its own digits.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an archive back with the `tar` crate's reader, PAX paths included, checking each header's checksum.
    fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut reader = tar::Archive::new(archive);
        let mut out = Vec::new();
        for entry in reader.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            out.push((path, data));
        }
        out
    }

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut a = Vec::new();
        for (name, data) in files {
            a.extend(file_header(name, data.len() as u64, 1_700_000_000));
            a.extend(*data);
            a.resize(a.len() + padding(data.len() as u64), 0);
        }
        a.extend(TRAILER);
        a
    }

    #[test]
    fn short_split_and_very_long_unicode_names_read_back_exactly() {
        let long_dir = "d".repeat(120);
        let split = format!("{long_dir}/file.txt");
        let very_long = format!("{}/ünïcode {}.bin", "x".repeat(150), "y".repeat(120));
        let files: Vec<(&str, &[u8])> = vec![
            ("a.txt", b"hello"),
            (&split, b""),
            (&very_long, &[7u8; 1000]),
        ];
        let a = archive(&files);
        assert_eq!(a.len() % BLOCK, 0);
        let back = entries(&a);
        assert_eq!(back.len(), 3);
        for ((name, data), (n, d)) in files.iter().zip(&back) {
            assert_eq!((name.to_string(), data.to_vec()), (n.clone(), d.clone()));
        }
    }

    #[test]
    fn pax_records_count_their_own_length() {
        let r = pax_record("path", &"p".repeat(95));
        assert_eq!(r.len().to_string(), r.split(' ').next().unwrap());
        let r = pax_record("size", "9");
        assert_eq!(r, "9 size=9\n");
    }
}
