//! A store as a file (`portico store export` and `import`): a [`Snapshot`] as JSON lines.
//!
//! The first line says what the file is and how much it holds, so a file cut short is
//! refused, not half imported:
//!
//! ```text
//! {"portico_export":1,"version":"0.1.0","records":3,"blobs":2}
//! {"kind":"Host","key":"app.example.com","fields":{"ip":"10.0.0.5","targetPort":"8080",…}}
//! {"blob":"app.example.com:latest","text":"{\"fullchain_pem\":…}"}
//! {"blob":"…","base64":"…"}
//! ```
//!
//! Then one line per record (`kind` is the seed's model name, `fields` the record's fields as
//! stored) and one per lasting blob (`text` when it is UTF-8, else `base64`). The file holds
//! every private key the store holds.

use std::io::{BufRead, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::copy::Snapshot;
use crate::{Fields, Key, Kind};

/// The format's version, in the first line's `portico_export`.
pub const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    portico_export: u32,
    version: String,
    records: usize,
    blobs: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum Line {
    Record { kind: String, key: String, fields: Fields },
    Text { blob: String, text: String },
    Binary { blob: String, base64: String },
}

/// Writes `snapshot` to `out` as the documented JSON lines.
pub fn write(snapshot: &Snapshot, mut out: impl Write) -> std::io::Result<()> {
    let counts = snapshot.counts();
    let header = Header {
        portico_export: FORMAT,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        records: counts.records.values().sum(),
        blobs: counts.blobs,
    };
    line(&mut out, &header)?;
    for (kind, records) in &snapshot.records {
        for (key, fields) in records {
            line(&mut out, &Line::Record { kind: kind.name().to_owned(), key: key.clone(), fields: fields.clone() })?;
        }
    }
    for (key, value) in &snapshot.blobs {
        let blob = key.as_str().to_owned();
        match std::str::from_utf8(value) {
            Ok(text) => line(&mut out, &Line::Text { blob, text: text.to_owned() })?,
            Err(_) => line(&mut out, &Line::Binary { blob, base64: BASE64.encode(value) })?,
        }
    }
    out.flush()
}

/// Reads a file [`write()`] wrote. Every line is checked before anything is returned.
pub fn read(input: impl BufRead) -> Result<Snapshot, BackupError> {
    let mut lines = input.lines().enumerate();
    let Some((_, first)) = lines.next() else { return Err(BackupError::Empty) };
    let header: Header = serde_json::from_str(&first?).map_err(|_| BackupError::NotAnExport)?;
    if header.portico_export != FORMAT {
        return Err(BackupError::Format(header.portico_export));
    }
    let mut snapshot = Snapshot::default();
    for (index, line) in lines {
        let number = index + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line =
            serde_json::from_str(&line).map_err(|e| BackupError::Line { number, detail: e.to_string() })?;
        match parsed {
            Line::Record { kind, key, fields } => {
                let kind = Kind::from_name(&kind)
                    .ok_or_else(|| BackupError::Line { number, detail: format!("unknown record kind {kind:?}") })?;
                snapshot.records.entry(kind).or_default().push((key, fields));
            }
            Line::Text { blob, text } => snapshot.blobs.push((Key::listed(blob), text.into_bytes())),
            Line::Binary { blob, base64 } => {
                let value = BASE64
                    .decode(base64)
                    .map_err(|e| BackupError::Line { number, detail: format!("blob {blob}: {e}") })?;
                snapshot.blobs.push((Key::listed(blob), value));
            }
        }
    }
    let counts = snapshot.counts();
    let records = counts.records.values().sum();
    if (records, counts.blobs) != (header.records, header.blobs) {
        return Err(BackupError::Incomplete {
            expected: (header.records, header.blobs),
            found: (records, counts.blobs),
        });
    }
    Ok(snapshot)
}

/// One JSON line.
fn line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// Why an export file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// The first line is not an export's header.
    #[error("this is not a file `portico store export` wrote (its first line is not the export's header)")]
    NotAnExport,
    /// A format this version does not read.
    #[error("the file is in export format {0}; this version of Portico reads format {FORMAT}")]
    Format(u32),
    /// A line that is not a record or a blob.
    #[error("line {number}: {detail}")]
    Line {
        /// The line's number, from 1.
        number: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// Fewer or more lines than the header says: a file cut short, or edited.
    #[error(
        "the file holds {} records and {} blobs where its header says {} and {}: it was cut short or edited",
        found.0, found.1, expected.0, expected.1
    )]
    Incomplete {
        /// Records and blobs the header announces.
        expected: (usize, usize),
        /// Records and blobs the file holds.
        found: (usize, usize),
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut snapshot = Snapshot::default();
        let fields =
            Fields::from([("ip".to_owned(), "10.0.0.5".to_owned()), ("targetPort".to_owned(), "80".to_owned())]);
        snapshot.records.insert(Kind::Host, vec![("a.example".to_owned(), fields)]);
        snapshot.records.insert(Kind::User, vec![]);
        snapshot.blobs.push((Key::listed("a.example:latest".to_owned()), b"-----BEGIN\nPEM\n".to_vec()));
        snapshot.blobs.push((Key::listed("binary".to_owned()), vec![0, 159, 146, 150, 255]));
        snapshot
    }

    #[test]
    fn a_snapshot_survives_the_file() {
        let snapshot = sample();
        let mut file = Vec::new();
        write(&snapshot, &mut file).unwrap();
        let text = String::from_utf8(file.clone()).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains(r#""text":"-----BEGIN\nPEM\n""#), "PEMs stay readable: {text}");
        assert!(text.contains(r#""base64":"AJ+Slv8=""#), "{text}");
        let back = read(file.as_slice()).unwrap();
        assert_eq!(back.records[&Kind::Host], snapshot.records[&Kind::Host]);
        assert_eq!(back.blobs, snapshot.blobs);
    }

    #[test]
    fn a_damaged_file_is_refused_whole() {
        let mut file = Vec::new();
        write(&sample(), &mut file).unwrap();
        let text = String::from_utf8(file).unwrap();
        let cut: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
        let error = read(cut.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("cut short"), "{error}");
        let odd = text.replacen(r#""kind":"Host""#, r#""kind":"Hots""#, 1);
        assert_eq!(read(odd.as_bytes()).unwrap_err().to_string(), r#"line 2: unknown record kind "Hots""#);
        assert!(matches!(read("{}\n".as_bytes()), Err(BackupError::NotAnExport)));
        assert!(matches!(read("".as_bytes()), Err(BackupError::Empty)));
        let future = text.replacen(r#""portico_export":1"#, r#""portico_export":9"#, 1);
        assert!(matches!(read(future.as_bytes()), Err(BackupError::Format(9))));
    }
}
