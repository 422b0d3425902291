//! Room left on a local file system, and the floor (`min_free_space`) under which the
//! registry takes no new uploads.
//!
//! Why a floor: on a disk that pushes fill to the last block, every client that retries
//! opens a fresh upload session, and every session is a metadata write that eats into the
//! room kept for the metadata log (`metadata/reserve.rs`), which is what lets a DELETE and
//! a collection free space again. Refusing new sessions early keeps that room for them,
//! and tells clients why (507) before a layer is half-sent. Sessions already open may
//! finish: a push that is half-way through is worth completing, and what it needs was
//! mostly there when it started.

use std::path::Path;
use std::str::FromStr;

/// Free space and size of a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use (blocks reserved for root not counted).
    pub available: u64,
    pub size: u64,
}

/// The space of the file system that holds `path`.
pub fn disk_space(path: &Path) -> std::io::Result<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string; `stat` is read only after a successful
    // call has filled it.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    Ok(DiskSpace {
        available: stat.f_bavail.saturating_mul(stat.f_frsize),
        size: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

/// How much of the disk must stay free for a new upload session to be opened: a share of
/// the file system (`2%`, the default) or a size (`512MiB`, `10GiB`, or plain bytes). `0`
/// turns the floor off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFreeSpace {
    /// Hundredths of a percent of the file system's size (so `0.5%` is 50).
    Share(u32),
    Bytes(u64),
}

impl Default for MinFreeSpace {
    fn default() -> Self {
        // 2%: room for the uploads already under way to finish and for the metadata to go
        // on, on disks from tens of gigabytes up; large volumes set a size instead.
        MinFreeSpace::Share(200)
    }
}

impl MinFreeSpace {
    /// The floor in bytes on a file system of `size` bytes.
    pub fn bytes(self, size: u64) -> u64 {
        match self {
            MinFreeSpace::Share(hundredths) => (u128::from(size) * u128::from(hundredths) / 10_000) as u64,
            MinFreeSpace::Bytes(bytes) => bytes,
        }
    }

    pub fn is_off(self) -> bool {
        matches!(self, MinFreeSpace::Share(0) | MinFreeSpace::Bytes(0))
    }
}

impl FromStr for MinFreeSpace {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let wrong = || format!("min_free_space {raw:?} is neither a share (\"2%\") nor a size (\"512MiB\", \"10GiB\")");
        if let Some(share) = raw.strip_suffix('%') {
            // Whole hundredths of a percent, without floating point: "2", "0.5", "12.25".
            let (whole, fraction) = match share.trim().split_once('.') {
                Some((_, "")) => return Err(wrong()),
                Some((whole, fraction)) => (whole, fraction),
                None => (share.trim(), ""),
            };
            let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            if whole.is_empty() || !digits(whole) || fraction.len() > 2 || !digits(fraction) {
                return Err(wrong());
            }
            let whole: u32 = whole.parse().map_err(|_| wrong())?;
            let fraction: u32 = format!("{fraction:0<2}").parse().map_err(|_| wrong())?;
            if whole > 100 || (whole == 100 && fraction > 0) {
                return Err(format!("min_free_space {raw:?} is more than the whole disk"));
            }
            return Ok(MinFreeSpace::Share(whole * 100 + fraction));
        }
        let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let (number, unit) = raw.split_at(split);
        let n: u64 = number.parse().map_err(|_| wrong())?;
        let unit: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(wrong()),
        };
        n.checked_mul(unit).map(MinFreeSpace::Bytes).ok_or_else(wrong)
    }
}

impl<'de> serde::Deserialize<'de> for MinFreeSpace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A TOML integer is a size in bytes; a string is a share or a size with its unit.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(MinFreeSpace::Bytes(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_sizes() {
        let parse = |raw: &str| raw.parse::<MinFreeSpace>();
        assert_eq!(parse("2%"), Ok(MinFreeSpace::Share(200)));
        assert_eq!(parse("0.5%"), Ok(MinFreeSpace::Share(50)));
        assert_eq!(parse("12.25 %"), Ok(MinFreeSpace::Share(1225)));
        assert_eq!(parse("100%"), Ok(MinFreeSpace::Share(10_000)));
        assert_eq!(parse("512MiB"), Ok(MinFreeSpace::Bytes(512 << 20)));
        assert_eq!(parse("10 GiB"), Ok(MinFreeSpace::Bytes(10 << 30)));
        assert_eq!(parse("4096"), Ok(MinFreeSpace::Bytes(4096)));
        for wrong in [
            "",
            "%",
            "two%",
            "1.234%",
            "100.5%",
            "101%",
            "-1%",
            "+2%",
            "2.%",
            ".5%",
            "5GB",
            "1.5GiB",
            "+5",
            "99999999999TiB",
        ] {
            assert!(parse(wrong).is_err(), "{wrong:?} was accepted");
        }
        assert!(parse("0").unwrap().is_off() && parse("0%").unwrap().is_off());
        assert!(!MinFreeSpace::default().is_off());
    }

    #[test]
    fn a_share_is_of_the_file_system_size() {
        assert_eq!(MinFreeSpace::Share(200).bytes(1000 << 20), 20 << 20);
        assert_eq!(MinFreeSpace::Share(10_000).bytes(u64::MAX), u64::MAX);
        assert_eq!(MinFreeSpace::Bytes(7).bytes(1 << 40), 7);
    }

    #[test]
    fn the_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let space = disk_space(dir.path()).unwrap();
        assert!(space.size > 0 && space.available <= space.size, "{space:?}");
        assert!(disk_space(&dir.path().join("missing")).is_err());
    }
}
