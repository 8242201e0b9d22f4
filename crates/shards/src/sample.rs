/// One WebDataset sample: consecutive tar members that share a key.
///
/// The key of a member is its path up to the first dot of its file name (the part after
/// the last `/`); the extension is the rest. `a/b/img001.photo.jpg` has key `a/b/img001`
/// and extension `photo.jpg`. A name without a dot in its file name is a key of its own
/// with an empty extension (Python's `webdataset` skips such members; this crate keeps
/// them so that filtering a shard never drops bytes silently). A file name that starts
/// with a dot has an empty stem: `dir/.hidden` has key `dir/` and extension `hidden`.
///
/// Members keep their names and bytes exactly as stored; only [`Sample::member`]
/// compares extensions ASCII-case-insensitively. A sample may hold two members with the
/// same extension (Python's `webdataset` rejects that); both are kept, in tar order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub(crate) key: String,
    pub(crate) members: Vec<Member>,
}

impl Sample {
    /// Creates a sample with no members.
    pub fn new(key: impl Into<String>) -> Sample {
        Sample { key: key.into(), members: Vec::new() }
    }

    /// A sample of `members` under `key`, as given: [`crate::ShardWriter::write_sample`]
    /// refuses members whose key differs.
    pub fn from_parts(key: impl Into<String>, members: Vec<Member>) -> Sample {
        Sample { key: key.into(), members }
    }

    /// The key shared by all members.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The members in tar order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The key and the members, taken apart without copying.
    pub fn into_parts(self) -> (String, Vec<Member>) {
        (self.key, self.members)
    }

    /// Adds `member` at the end and returns the sample, for chaining.
    pub fn with_member(mut self, member: Member) -> Sample {
        self.members.push(member);
        self
    }

    /// Adds a member named `{key}.{extension}` and returns the sample, for chaining.
    pub fn with(mut self, extension: &str, data: impl Into<Vec<u8>>) -> Sample {
        let name = format!("{}.{extension}", self.key);
        self.members.push(Member::new(name, data));
        self
    }

    /// The first member whose extension equals `extension`, ignoring ASCII case
    /// (`"jpg"` finds `x.JPG` but not `x.jpeg`, and not `x.photo.jpg`).
    pub fn member(&self, extension: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.extension().eq_ignore_ascii_case(extension))
    }

    /// The first member whose extension is any of `extensions`, ignoring ASCII case,
    /// in member order (`&["jpg", "jpeg", "png"]`).
    pub fn member_any(&self, extensions: &[&str]) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| extensions.iter().any(|e| m.extension().eq_ignore_ascii_case(e)))
    }

    /// Total bytes of member data.
    pub fn data_len(&self) -> u64 {
        self.members.iter().map(|m| m.data.len() as u64).sum()
    }
}

/// One file of a sample.
#[derive(Clone, PartialEq, Eq)]
pub struct Member {
    /// The full path exactly as stored in the tar.
    pub name: String,
    /// The file's bytes.
    pub data: Vec<u8>,
}

impl Member {
    /// Creates a member.
    pub fn new(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Member {
        Member { name: name.into(), data: data.into() }
    }

    /// The key part of the name (see [`Sample`]).
    pub fn key(&self) -> &str {
        split_name(&self.name).0
    }

    /// The extension: everything after the first dot of the file name, as stored
    /// (`photo.jpg` for `a/img.photo.jpg`), or `""` when the file name has no dot.
    pub fn extension(&self) -> &str {
        split_name(&self.name).1
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("data", &format_args!("[{} bytes]", self.data.len()))
            .finish()
    }
}

/// Splits a member name into `(key, extension)` by the WebDataset rule; see [`Sample`].
pub fn split_name(name: &str) -> (&str, &str) {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[file_start..].find('.') {
        Some(dot) => (&name[..file_start + dot], &name[file_start + dot + 1..]),
        None => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_examples() {
        assert_eq!(split_name("a/b/img001.photo.jpg"), ("a/b/img001", "photo.jpg"));
        assert_eq!(split_name("img.JPG"), ("img", "JPG"));
        assert_eq!(split_name("a.b/c.d/e"), ("a.b/c.d/e", ""));
        assert_eq!(split_name("a.b/c.d/e.f"), ("a.b/c.d/e", "f"));
        assert_eq!(split_name("noext"), ("noext", ""));
        assert_eq!(split_name("dir/.hidden"), ("dir/", "hidden"));
        assert_eq!(split_name("x."), ("x", ""));
        assert_eq!(split_name(""), ("", ""));
    }

    #[test]
    fn member_lookup_ignores_case_only() {
        let s = Sample::new("k").with("JPG", b"1".to_vec()).with("photo.jpg", b"2".to_vec());
        assert_eq!(s.member("jpg").unwrap().data, b"1");
        assert_eq!(s.member("PHOTO.JPG").unwrap().data, b"2");
        assert!(s.member("jpeg").is_none());
        assert_eq!(s.member_any(&["jpeg", "photo.jpg"]).unwrap().data, b"2");
        assert_eq!(s.data_len(), 2);
    }
}
