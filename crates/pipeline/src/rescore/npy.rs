//! NumPy `.npy` arrays, read by hand: the header of format versions 1, 2 and 3, then the data
//! a block of rows at a time. Only what embeddings and key lists use is accepted: C order,
//! little-endian `float32` / `float16` (`<f4`, `<f2`) and fixed-width strings (`<U`, `|S`).
//! Anything else is refused with the reason; the caller names the file.
use std::io::{self, Read};

/// The element type of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F16,
    /// `<U n`: `n` UTF-32LE code points, NUL-padded.
    Unicode(usize),
    /// `|S n`: `n` bytes, NUL-padded.
    Bytes(usize),
}

impl Dtype {
    fn parse(descr: &str) -> Result<Self, String> {
        let width = |digits: &str| {
            digits.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| unsupported(descr))
        };
        match descr {
            "<f4" => Ok(Dtype::F32),
            "<f2" => Ok(Dtype::F16),
            ">f4" | ">f2" => Err(format!(
                "dtype {descr:?} is big-endian; save it little-endian (`a.astype('<f4')`)"
            )),
            d if d.starts_with("<U") => Ok(Dtype::Unicode(width(&d[2..])?)),
            d if d.starts_with("|S") => Ok(Dtype::Bytes(width(&d[2..])?)),
            _ => Err(unsupported(descr)),
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
            Dtype::Unicode(n) => 4 * n,
            Dtype::Bytes(n) => n,
        }
    }
}

fn unsupported(descr: &str) -> String {
    format!(
        "dtype {descr:?} is not supported (embeddings: float32 or float16, `<f4` or `<f2`; keys: `<U` or `|S` strings)"
    )
}

/// What an `.npy` header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

/// Longest header accepted: numpy pads headers to 64 bytes; real ones are under 200.
const MAX_HEADER: usize = 1 << 16;

/// Reads the magic string, version and header dictionary, leaving `r` at the first data byte.
pub(crate) fn read_header(r: &mut impl Read) -> Result<Header, String> {
    let io = |e: io::Error| format!("reading the .npy header: {e}");
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io)?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let len = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(io)?;
            usize::from(u16::from_le_bytes(b))
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(io)?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(format!(".npy format version {v} is not supported (1, 2 or 3)")),
    };
    if len > MAX_HEADER {
        return Err(format!(".npy header of {len} bytes is over the {MAX_HEADER}-byte limit"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).map_err(io)?;
    let text = String::from_utf8(text).map_err(|_| "the .npy header is not utf-8".to_string())?;
    parse_dict(&text)
}

/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 768), }`.
fn parse_dict(text: &str) -> Result<Header, String> {
    let value = |key: &str| {
        let at = text
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("the .npy header has no {key:?}: {text:?}"))?;
        let rest = text[at + key.len() + 2..].trim_start();
        let rest =
            rest.strip_prefix(':').ok_or_else(|| format!("unreadable .npy header {text:?}"))?;
        Ok::<_, String>(rest.trim_start())
    };
    let descr = value("descr")?;
    let quote = descr.chars().next().filter(|c| *c == '\'' || *c == '"');
    let descr = quote
        .and_then(|q| descr[1..].split(q).next())
        .ok_or_else(|| format!("the .npy dtype is not a simple type: {text:?}"))?;
    let dtype = Dtype::parse(descr)?;
    let fortran = value("fortran_order")?;
    if fortran.starts_with("True") {
        return Err(
            "the array is in Fortran order; save it in C order (`np.ascontiguousarray`)".into()
        );
    } else if !fortran.starts_with("False") {
        return Err(format!("unreadable fortran_order in the .npy header {text:?}"));
    }
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("unreadable shape in the .npy header {text:?}"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("unreadable shape ({inner})")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header { dtype, shape })
}

/// Rows of a 2-d float array, `rows × dim`, read in blocks into `f32`.
pub(crate) struct FloatRows {
    reader: Box<dyn Read + Send>,
    dtype: Dtype,
    dim: usize,
    rows_left: usize,
    bytes: Vec<u8>,
}

impl FloatRows {
    /// The rows after `header`, read from `reader`.
    pub fn new(header: &Header, reader: Box<dyn Read + Send>) -> Result<Self, String> {
        if !matches!(header.dtype, Dtype::F32 | Dtype::F16) {
            return Err(format!(
                "embeddings have dtype {:?}; float32 or float16 expected",
                header.dtype
            ));
        }
        let [rows, dim] = header.shape[..] else {
            return Err(format!(
                "embeddings have shape {:?}; a 2-d array (rows, dim) expected",
                header.shape
            ));
        };
        Ok(FloatRows { reader, dtype: header.dtype, dim, rows_left: rows, bytes: Vec::new() })
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows not read yet.
    pub fn rows_left(&self) -> usize {
        self.rows_left
    }

    /// Appends up to `max` rows to `out`; returns how many (0 at the end).
    pub fn read(&mut self, max: usize, out: &mut Vec<f32>) -> Result<usize, String> {
        let rows = max.min(self.rows_left);
        let len = rows * self.dim * self.dtype.size();
        self.bytes.resize(len, 0);
        self.reader.read_exact(&mut self.bytes).map_err(|e| {
            format!("reading {rows} rows with {} still expected: {e}", self.rows_left)
        })?;
        self.rows_left -= rows;
        match self.dtype {
            Dtype::F32 => out.extend(
                self.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            _ => out.extend(
                self.bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
        }
        Ok(rows)
    }
}

/// The strings of a 1-d string array, read in blocks.
pub(crate) struct StringRows {
    reader: Box<dyn Read + Send>,
    dtype: Dtype,
    rows_left: usize,
    bytes: Vec<u8>,
}

impl StringRows {
    pub fn new(header: &Header, reader: Box<dyn Read + Send>) -> Result<Self, String> {
        if !matches!(header.dtype, Dtype::Unicode(_) | Dtype::Bytes(_)) {
            return Err(format!("keys have dtype {:?}; a string array expected", header.dtype));
        }
        let [rows] = header.shape[..] else {
            return Err(format!("keys have shape {:?}; a 1-d array expected", header.shape));
        };
        Ok(StringRows { reader, dtype: header.dtype, rows_left: rows, bytes: Vec::new() })
    }

    pub fn rows_left(&self) -> usize {
        self.rows_left
    }

    /// Calls `each` with the next `count` strings; fails when fewer are left.
    pub fn read(&mut self, count: usize, mut each: impl FnMut(&str)) -> Result<(), String> {
        if count > self.rows_left {
            return Err(format!("{count} keys wanted, {} left", self.rows_left));
        }
        let size = self.dtype.size();
        self.bytes.resize(count * size, 0);
        self.reader.read_exact(&mut self.bytes).map_err(|e| format!("reading keys: {e}"))?;
        self.rows_left -= count;
        let mut text = String::new();
        for item in self.bytes.chunks_exact(size) {
            text.clear();
            match self.dtype {
                Dtype::Unicode(_) => {
                    for unit in item.chunks_exact(4) {
                        let code = u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]]);
                        if code == 0 {
                            break;
                        }
                        text.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                    }
                }
                _ => {
                    let end = item.iter().position(|&b| b == 0).unwrap_or(item.len());
                    text.push_str(&String::from_utf8_lossy(&item[..end]));
                }
            }
            each(&text);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend((dict.len() as u16).to_le_bytes());
        } else {
            out.extend((dict.len() as u32).to_le_bytes());
        }
        out.extend(dict.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn headers_of_every_version_are_read() {
        for version in [1, 2, 3] {
            let bytes =
                npy(version, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }\n", &[]);
            let header = read_header(&mut &bytes[..]).unwrap();
            assert_eq!(header, Header { dtype: Dtype::F16, shape: vec![2, 3] });
        }
        let keys = npy(1, "{'descr': '<U7', 'fortran_order': False, 'shape': (5,), }", &[]);
        assert_eq!(read_header(&mut &keys[..]).unwrap().dtype, Dtype::Unicode(7));
    }

    #[test]
    fn other_layouts_are_refused_with_the_reason() {
        let refuse = |dict: &str| read_header(&mut &npy(1, dict, &[])[..]).unwrap_err();
        assert!(
            refuse("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }")
                .contains("Fortran")
        );
        assert!(
            refuse("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }")
                .contains("big-endian")
        );
        assert!(
            refuse("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }")
                .contains("not supported")
        );
        assert!(read_header(&mut &b"PK\x03\x04 not npy"[..]).unwrap_err().contains("magic"));
        let v4 = npy(4, "{}", &[]);
        assert!(read_header(&mut &v4[..]).unwrap_err().contains("version 4"));
    }

    #[test]
    fn float_and_string_rows_are_read_in_blocks() {
        let values: Vec<u8> =
            [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = Header { dtype: Dtype::F32, shape: vec![3, 2] };
        let mut rows = FloatRows::new(&header, Box::new(std::io::Cursor::new(values))).unwrap();
        let mut out = Vec::new();
        assert_eq!(rows.read(2, &mut out).unwrap(), 2);
        assert_eq!(rows.read(2, &mut out).unwrap(), 1);
        assert_eq!(rows.read(2, &mut out).unwrap(), 0);
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

        let mut data = Vec::new();
        for key in ["ab", "cde"] {
            let mut units: Vec<u32> = key.chars().map(u32::from).collect();
            units.resize(3, 0);
            data.extend(units.iter().flat_map(|u| u.to_le_bytes()));
        }
        let header = Header { dtype: Dtype::Unicode(3), shape: vec![2] };
        let mut keys = StringRows::new(&header, Box::new(std::io::Cursor::new(data))).unwrap();
        let mut got = Vec::new();
        keys.read(2, |k| got.push(k.to_string())).unwrap();
        assert_eq!(got, ["ab", "cde"]);
        assert!(keys.read(1, |_| {}).is_err());
    }
}
