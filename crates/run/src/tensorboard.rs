//! TensorBoard's event files, so that `tensorboard --logdir checkpoints/` shows runs as they
//! train. A file is a sequence of records (TFRecord framing: the length as a little-endian u64,
//! its masked CRC-32C, the data, the data's masked CRC-32C), each an `Event` protocol buffer
//! (tensorflow/core/util/event.proto): first one naming the file version, then one per logged
//! step holding that step's scalars. [`read_scalars`] reads a file back, checking every CRC.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message;

/// The messages of event.proto and summary.proto that scalars need (fields by their numbers
/// there).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        #[prost(int64, tag = "2")]
        pub step: i64,
        #[prost(oneof = "What", tags = "3, 5, 6")]
        pub what: Option<What>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        #[prost(string, tag = "3")]
        FileVersion(String),
        #[prost(message, tag = "5")]
        Summary(Summary),
        #[prost(message, tag = "6")]
        SessionLog(SessionLog),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<Value>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(string, tag = "1")]
        pub tag: String,
        #[prost(float, optional, tag = "2")]
        pub simple_value: Option<f32>,
    }

    /// A (re)start: TensorBoard drops what earlier files logged at or after its step, which a
    /// resumed run logs again.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionLog {
        /// 1: START.
        #[prost(int32, tag = "1")]
        pub status: i32,
    }
}

/// TFRecord's CRC: CRC-32C, rotated and offset so that a CRC of data holding CRCs is not
/// degenerate.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One event file of a run, appended to as the run logs.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir`, named `events.out.tfevents.<seconds>.<microseconds>.<host>.
    /// <pid>` (TensorBoard reads a folder's event files in the order of their names), whose
    /// first logged step will be `first_step`: 1 for a new run; for a resumed run the step
    /// after its checkpoint's, which TensorBoard is told, so that it drops what earlier files
    /// logged from there on (the run logs it again).
    pub fn create(dir: &Path, first_step: u64) -> Result<EventWriter> {
        let now = wall_time();
        let host = crate::lock::this_host();
        let name = format!(
            "events.out.tfevents.{:010}.{:06}.{host}.{}",
            now as u64,
            (now.fract() * 1e6) as u64,
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::create(&path)
            .with_context(|| format!("cannot create the TensorBoard file {}", path.display()))?;
        let mut writer = EventWriter {
            file: BufWriter::new(file),
            path,
        };
        writer.write(proto::Event {
            wall_time: now,
            step: 0,
            what: Some(proto::What::FileVersion("brain.Event:2".into())),
        })?;
        if first_step > 1 {
            writer.write(proto::Event {
                wall_time: now,
                step: first_step as i64,
                what: Some(proto::What::SessionLog(proto::SessionLog { status: 1 })),
            })?;
        }
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The scalars of one step, by tag (`train/loss`, ...), written through to the file.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| proto::Value {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
            })
            .collect();
        self.write(proto::Event {
            wall_time: wall_time(),
            step: step as i64,
            what: Some(proto::What::Summary(proto::Summary { value })),
        })
    }

    fn write(&mut self, event: proto::Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.file
            .write_all(&record)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write to {}", self.path.display()))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One scalar as an event file holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub step: u64,
    pub tag: String,
    pub value: f32,
}

/// Every scalar of the event file at `path`, in order; the file must start with its version
/// event, and a record whose length or data fails its CRC, or that ends early, is an error
/// naming its offset.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let mut bytes = vec![];
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut at = 0;
    let mut scalars = vec![];
    let mut first = true;
    while at < bytes.len() {
        let field = |from: usize, n: usize| -> Result<&[u8]> {
            bytes
                .get(from..from + n)
                .with_context(|| format!("{}: the record at byte {at} ends early", path.display()))
        };
        let len_bytes = field(at, 8)?;
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let crc = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        if crc(field(at + 8, 4)?) != masked_crc(len_bytes) {
            bail!(
                "{}: the record at byte {at} has a bad length CRC",
                path.display()
            );
        }
        let data = field(at + 12, len)?;
        if crc(field(at + 12 + len, 4)?) != masked_crc(data) {
            bail!(
                "{}: the record at byte {at} has a bad data CRC",
                path.display()
            );
        }
        let event = proto::Event::decode(data)
            .with_context(|| format!("{}: the record at byte {at}", path.display()))?;
        match (first, event.what) {
            (true, Some(proto::What::FileVersion(_))) => {}
            (true, _) => bail!("{}: no file version first", path.display()),
            (false, Some(proto::What::Summary(summary))) => {
                for v in summary.value {
                    if let Some(value) = v.simple_value {
                        scalars.push(Scalar {
                            step: event.step as u64,
                            tag: v.tag,
                            value,
                        });
                    }
                }
            }
            (false, _) => {}
        }
        first = false;
        at += 16 + len;
    }
    Ok(scalars)
}

/// The event files of a run directory, oldest first (their names start with the time).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masked_crc_is_tfrecord_s() {
        // CRC-32C of "123456789" is 0xe3069283 (its check value); the mask rotates right by
        // 15 and adds 0xa282ead8.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn scalars_written_are_read_back_and_a_damaged_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), 1).unwrap();
        w.scalars(10, &[("train/loss".into(), 2.5), ("train/lr".into(), 1e-3)])
            .unwrap();
        w.scalars(20, &[("train/loss".into(), 2.25)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        assert_eq!(event_files(dir.path()).unwrap(), vec![path.clone()]);
        let got = read_scalars(&path).unwrap();
        let want = [
            (10, "train/loss", 2.5),
            (10, "train/lr", 1e-3),
            (20, "train/loss", 2.25),
        ];
        assert_eq!(got.len(), want.len());
        for (g, (step, tag, value)) in got.iter().zip(want) {
            assert_eq!((g.step, g.tag.as_str(), g.value), (step, tag, value as f32));
        }
        // One flipped bit in the last record's data.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_scalars(&path).unwrap_err().to_string();
        assert!(err.contains("bad data CRC"), "{err}");
        // Cut short.
        std::fs::write(&path, &bytes[..n - 3]).unwrap();
        let err = read_scalars(&path).unwrap_err().to_string();
        assert!(err.contains("ends early"), "{err}");
    }

    #[test]
    fn a_resumed_run_s_file_starts_with_a_session_start_at_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let w = EventWriter::create(dir.path(), 41).unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        // Skip the version record; decode the second.
        let first = 16 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(bytes[first..first + 8].try_into().unwrap()) as usize;
        let event = proto::Event::decode(&bytes[first + 12..first + 12 + len]).unwrap();
        assert_eq!(event.step, 41);
        assert_eq!(
            event.what,
            Some(proto::What::SessionLog(proto::SessionLog { status: 1 }))
        );
    }
}
