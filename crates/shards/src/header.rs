//! Parsing of tar header blocks and pax records: pure functions over bytes.

/// Size of a tar block.
pub(crate) const BLOCK: usize = 512;

/// Why a header is corrupt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HeaderError(pub(crate) &'static str);

/// The fields of a header block that the reader needs.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) typeflag: u8,
    pub(crate) size: u64,
    ustar: bool,
}

impl Header {
    /// The entry's name from the header block: the POSIX ustar prefix, if any, joined to
    /// the name field with a `/`.
    pub(crate) fn name(&self, block: &[u8; BLOCK]) -> Vec<u8> {
        let name = until_nul(&block[0..100]);
        let prefix = if self.ustar { until_nul(&block[345..500]) } else { &[] };
        if prefix.is_empty() {
            return name.to_vec();
        }
        let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
        full.extend_from_slice(prefix);
        full.push(b'/');
        full.extend_from_slice(name);
        full
    }
}

/// Parses a header block that is not all zeros.
pub(crate) fn parse(block: &[u8; BLOCK]) -> Result<Header, HeaderError> {
    let stored =
        parse_number(&block[148..156]).map_err(|_| HeaderError("invalid checksum field"))?;
    let unsigned: u64 =
        block[..148].iter().chain(&block[156..]).map(|&b| u64::from(b)).sum::<u64>()
            + 8 * u64::from(b' ');
    let signed: i64 =
        block[..148].iter().chain(&block[156..]).map(|&b| i64::from(b as i8)).sum::<i64>()
            + 8 * i64::from(b' ');
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(HeaderError("checksum mismatch"));
    }
    let size = parse_number(&block[124..136]).map_err(|_| HeaderError("invalid size field"))?;
    // POSIX ustar ("ustar\0"); GNU's "ustar  \0" uses the prefix area for other fields.
    let ustar = &block[257..263] == b"ustar\0";
    Ok(Header { typeflag: block[156], size, ustar })
}

/// Parses a numeric field: octal text padded with spaces or NULs, or GNU base-256 when
/// the high bit of the first byte is set.
pub(crate) fn parse_number(field: &[u8]) -> Result<u64, HeaderError> {
    let invalid = HeaderError("invalid number");
    match field.first() {
        Some(0x80) => {
            let mut value = 0u64;
            for &b in &field[1..] {
                if value >> 56 != 0 {
                    return Err(invalid);
                }
                value = value << 8 | u64::from(b);
            }
            Ok(value)
        }
        Some(b) if b & 0x80 != 0 => Err(invalid),
        _ => {
            let text = until_nul(field).trim_ascii();
            let mut value = 0u64;
            for &b in text {
                if !(b'0'..=b'7').contains(&b) || value >> 61 != 0 {
                    return Err(invalid);
                }
                value = value << 3 | u64::from(b - b'0');
            }
            Ok(value)
        }
    }
}

/// The pax records that matter to a reader of regular files.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pax {
    pub(crate) path: Option<Vec<u8>>,
    pub(crate) size: Option<u64>,
    /// `GNU.sparse.*` records: the entry is a sparse file (GNU tar's pax formats 0.0, 0.1
    /// and 1.0), stored under a placeholder name as its map and its pieces.
    pub(crate) sparse: bool,
}

/// Parses pax extended header records (`"<len> <key>=<value>\n"`) into `pax`.
pub(crate) fn parse_pax(mut data: &[u8], pax: &mut Pax) -> Result<(), HeaderError> {
    let malformed = HeaderError("malformed pax record");
    while !data.iter().all(|&b| b == 0) {
        let space =
            data.iter().position(|&b| b == b' ').ok_or(HeaderError("malformed pax record"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(HeaderError("malformed pax record"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(malformed);
        }
        let record = &data[space + 1..len - 1];
        let eq =
            record.iter().position(|&b| b == b'=').ok_or(HeaderError("malformed pax record"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                pax.size = Some(size.ok_or(HeaderError("invalid pax size"))?);
            }
            _ if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

fn until_nul(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_number(b"   644 \0"), Ok(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Ok(0));
        assert_eq!(parse_number(b"        "), Ok(0));
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]), Ok(1 << 16));
        assert!(parse_number(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_number(&[0xff, 0xff]).is_err());
        assert!(parse_number(b"0009").is_err());
        assert!(parse_number(b"77777777777777777777777").is_err());
    }

    #[test]
    fn pax_records() {
        let mut pax = Pax::default();
        parse_pax(b"13 size=1234\n20 path=a/\xc3\xa9t\xc3\xa9.jpg\n8 x=y=z\n\0\0", &mut pax)
            .unwrap();
        assert_eq!(pax, Pax { path: Some("a/été.jpg".into()), size: Some(1234), sparse: false });
        parse_pax(b"27 GNU.sparse.name=a/b.bin\n", &mut pax).unwrap();
        assert!(pax.sparse);
        for bad in
            [&b"5 a=b\n"[..], b"x a=b\n", b"100 a=b\n", b"6 ab\n", b"7 a=bc", b"12 size=-1\n"]
        {
            assert!(parse_pax(bad, &mut Pax::default()).is_err(), "{:?}", bad.escape_ascii());
        }
    }

    #[test]
    fn checksum() {
        let mut block = [0u8; BLOCK];
        block[..5].copy_from_slice(b"a.txt");
        block[124..136].copy_from_slice(b"00000000005\0");
        block[156] = b'0';
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum::<u64>() + 8 * 32;
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let h = parse(&block).unwrap();
        assert_eq!((h.typeflag, h.size), (b'0', 5));
        assert_eq!(h.name(&block), b"a.txt");
        block[0] = b'b';
        assert_eq!(parse(&block).unwrap_err(), HeaderError("checksum mismatch"));
    }
}
