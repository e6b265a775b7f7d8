//! Varints and a bounds-checked reader: what the block format is written with.

use crate::StoreError;

#[derive(Default)]
pub(crate) struct Out(pub Vec<u8>);

impl Out {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// Zigzag: small negative and positive numbers both take few bytes.
    pub fn signed(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    /// A length, then the bytes.
    pub fn string(&mut self, s: &[u8]) {
        self.varint(s.len() as u64);
        self.bytes(s);
    }
}

/// Reads what `Out` wrote; anything short or malformed is [`StoreError::Corrupt`], never a panic.
pub(crate) struct In<'a> {
    buf: &'a [u8],
    at: usize,
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("span block: {what}"))
}

impl<'a> In<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        In { buf, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }

    pub fn u8(&mut self) -> Result<u8, StoreError> {
        let b = *self.buf.get(self.at).ok_or_else(|| corrupt("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    pub fn varint(&mut self) -> Result<u64, StoreError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    /// `total` plus the next varint: the running sums the format stores as differences (string
    /// ends, spans per trace, attributes per span, kept traces). Past `max`, or overflowing, is
    /// `what` corrupt, so every sum read is in order and in range.
    pub fn add_to(&mut self, total: u64, max: u64, what: &str) -> Result<u64, StoreError> {
        total
            .checked_add(self.varint()?)
            .filter(|t| *t <= max)
            .ok_or_else(|| corrupt(what))
    }

    pub fn signed(&mut self) -> Result<i64, StoreError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count of items each taking at least `min_bytes`: refused when the rest cannot hold them,
    /// so a corrupt count never sizes an allocation.
    pub fn count(&mut self, min_bytes: usize) -> Result<usize, StoreError> {
        let n = self.varint()?;
        let room = (self.buf.len() - self.at) as u64;
        if n > room / min_bytes.max(1) as u64 {
            return Err(corrupt("count past the end"));
        }
        Ok(n as usize)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| corrupt("truncated"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn string(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| corrupt("length"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_short_input_is_an_error() {
        let mut out = Out::default();
        let values = [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX];
        for v in values {
            out.varint(v);
        }
        for v in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            out.signed(v);
        }
        let mut r = In::new(&out.0);
        for v in values {
            assert_eq!(r.varint().unwrap(), v);
        }
        for v in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            assert_eq!(r.signed().unwrap(), v);
        }
        assert!(r.is_empty());
        assert!(In::new(&[0x80]).varint().is_err());
        assert!(In::new(&[0xff; 11]).varint().is_err());
        assert!(In::new(&[5, 1, 2]).string().is_err());
        assert!(In::new(&[0xff, 0xff, 0xff, 0x0f]).count(8).is_err());
    }
}
