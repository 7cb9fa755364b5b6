//! Link rates (`100mbit`) and byte sizes (`256kb`) in the notation of `tc`,
//! parsed once and checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::TestnetError;

/// A link rate in bits per second.
///
/// Parsed from and displayed in `tc` notation restricted to bit units
/// (`bit`, `kbit`, `mbit`, `gbit`, SI multiples of 1000) because `tc`'s
/// `mbps` means megaBYTES per second, a classic source of 8x mistakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    /// Bits per second; always > 0.
    bits_per_sec: u64,
}

impl Rate {
    /// A rate of `n` megabits per second.
    pub const fn mbit(n: u64) -> Self {
        Self {
            bits_per_sec: n * 1_000_000,
        }
    }

    /// Bits per second.
    pub const fn bits_per_sec(self) -> u64 {
        self.bits_per_sec
    }

    /// Megabits per second as a float, for reports.
    pub fn mbit_per_sec(self) -> f64 {
        self.bits_per_sec as f64 / 1e6
    }

    /// The tbf bucket size used for this rate, in bytes: 10 ms worth of
    /// traffic, at least 32 KiB (so a few full-size packets and GSO bursts
    /// pass without being dropped by the shaper itself).
    pub fn tbf_burst_bytes(self) -> u64 {
        (self.bits_per_sec / 8 / 100).max(32 * 1024)
    }
}

impl FromStr for Rate {
    type Err = TestnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit {
            "bit" => 1,
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            _ => return Err(TestnetError::InvalidRate(s.to_string())),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| TestnetError::InvalidRate(s.to_string()))?;
        match n.checked_mul(mult) {
            Some(b) if b > 0 => Ok(Self { bits_per_sec: b }),
            _ => Err(TestnetError::InvalidRate(s.to_string())),
        }
    }
}

impl TryFrom<String> for Rate {
    type Error = TestnetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> Self {
        r.to_string()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bits_per_sec;
        if b.is_multiple_of(1_000_000_000) {
            write!(f, "{}gbit", b / 1_000_000_000)
        } else if b.is_multiple_of(1_000_000) {
            write!(f, "{}mbit", b / 1_000_000)
        } else if b.is_multiple_of(1_000) {
            write!(f, "{}kbit", b / 1_000)
        } else {
            write!(f, "{b}bit")
        }
    }
}

/// A size in bytes, in `tc`'s size notation: `b` (or no unit), `kb`/`k`
/// (1024 bytes) and `mb`/`m` (1024 * 1024 bytes), as `tc` reads a tbf
/// `burst` (so `256kb` here is what `tc ... burst 256kb` would be: 262144
/// bytes). Bit units are refused: a burst is a bucket of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize {
    bytes: u64,
}

impl ByteSize {
    /// A size of `bytes` bytes.
    pub const fn bytes(bytes: u64) -> Self {
        Self { bytes }
    }

    /// The size in bytes.
    pub const fn get(self) -> u64 {
        self.bytes
    }
}

impl FromStr for ByteSize {
    type Err = TestnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || TestnetError::InvalidSpec(format!("bad size {s:?} (use e.g. 256kb, 1mb, 64000b)"));
        let t = s.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit {
            "" | "b" => 1,
            "k" | "kb" => 1024,
            "m" | "mb" => 1024 * 1024,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        match n.checked_mul(mult) {
            Some(b) if b > 0 => Ok(Self { bytes: b }),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for ByteSize {
    type Error = TestnetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> Self {
        b.to_string()
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes;
        if b.is_multiple_of(1024 * 1024) {
            write!(f, "{}mb", b / (1024 * 1024))
        } else if b.is_multiple_of(1024) {
            write!(f, "{}kb", b / 1024)
        } else {
            write!(f, "{b}b")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_tc_units() {
        for (s, b, shown) in [
            ("256kb", 262_144, "256kb"),
            ("256K", 262_144, "256kb"),
            ("1mb", 1_048_576, "1mb"),
            ("125000", 125_000, "125000b"),
            ("1536b", 1536, "1536b"),
        ] {
            let x: ByteSize = s.parse().unwrap();
            assert_eq!(x.get(), b, "{s}");
            assert_eq!(x.to_string(), shown, "{s}");
            assert_eq!(x.to_string().parse::<ByteSize>().unwrap(), x);
        }
        for s in [
            "",
            "kb",
            "0kb",
            "256kbit",
            "1.5kb",
            "-1kb",
            "99999999999999999mb",
        ] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
    }

    #[test]
    fn parses_tc_bit_units_and_round_trips() {
        for (s, b) in [
            ("100mbit", 100_000_000),
            ("1gbit", 1_000_000_000),
            ("512kbit", 512_000),
            ("9600bit", 9600),
        ] {
            let r: Rate = s.parse().unwrap();
            assert_eq!(r.bits_per_sec(), b);
            assert_eq!(r.to_string(), s);
        }
        assert_eq!("200MBIT".parse::<Rate>().unwrap(), Rate::mbit(200));
    }

    #[test]
    fn rejects_byte_units_and_garbage() {
        for s in [
            "100mbps",
            "100",
            "mbit",
            "0mbit",
            "-1mbit",
            "1.5mbit",
            "99999999999999gbit",
        ] {
            assert!(
                matches!(s.parse::<Rate>(), Err(TestnetError::InvalidRate(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn burst_is_ten_ms_with_a_floor() {
        assert_eq!(Rate::mbit(100).tbf_burst_bytes(), 125_000);
        assert_eq!(Rate::mbit(1).tbf_burst_bytes(), 32 * 1024);
    }
}
