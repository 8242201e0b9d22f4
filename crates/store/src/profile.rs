//! `AWS_PROFILE`: the named profile's keys from `~/.aws/credentials` and `~/.aws/config`
//! (or `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`), for what the environment does
//! not set itself.
use std::path::PathBuf;

/// Keys of a profile that the S3 client takes, under the names it reads.
const KEYS: [(&str, &str); 5] = [
    ("aws_access_key_id", "aws_access_key_id"),
    ("aws_secret_access_key", "aws_secret_access_key"),
    ("aws_session_token", "aws_session_token"),
    ("region", "aws_region"),
    ("endpoint_url", "aws_endpoint_url"),
];

/// Adds `profile`'s keys to `options` where they are not there already.
pub(crate) fn add_profile(profile: &str, options: &mut Vec<(String, String)>) {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let file = |var: &str, default: &str| {
        std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| home.join(".aws").join(default))
    };
    // The credentials file names sections `[name]`; the config file `[profile name]`
    // (`[default]` for the default profile).
    let sources = [
        (file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), profile.to_string()),
        (
            file("AWS_CONFIG_FILE", "config"),
            match profile {
                "default" => "default".to_string(),
                name => format!("profile {name}"),
            },
        ),
    ];
    for (path, section) in sources {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for (key, value) in section_values(&text, &section) {
            let Some((_, option)) = KEYS.iter().find(|(k, _)| *k == key) else { continue };
            if !options.iter().any(|(k, _)| k == option) {
                options.push((option.to_string(), value));
            }
        }
    }
}

/// `key = value` lines of `[section]` in an INI text.
fn section_values(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut values = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside
            && !line.starts_with(['#', ';'])
            && let Some((key, value)) = line.split_once('=')
        {
            values.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_s_section_is_read_and_others_are_not() {
        let text = "[default]\naws_access_key_id = A\n[profile lab]\nregion = eu-west-1\n# x\nendpoint_url=http://h:9000\n[other]\nregion = x\n";
        assert_eq!(
            section_values(text, "profile lab"),
            [
                ("region".into(), "eu-west-1".into()),
                ("endpoint_url".into(), "http://h:9000".into())
            ]
        );
        assert_eq!(section_values(text, "default"), [("aws_access_key_id".into(), "A".into())]);
    }
}
