//! Buffers shared by the NIC and the client: a receive buffer that frames are decoded from in
//! place, and a slab that hands out small reusable integer keys.

use std::io::{self, Read};

/// Bytes asked of the socket per read at least: enough for dozens of small frames per syscall.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// A buffer that grew past this (for a large transfer) is given back once it is empty again.
const KEEP_CAPACITY: usize = 1 << 20;

/// A receive buffer: bytes `[start, end)` of `buf` are received and not yet consumed. `buf` is
/// kept initialized up to its length, so reading into it needs no `unsafe`; it is zeroed only
/// when it grows.
pub(crate) struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    pub fn new() -> InBuf {
        InBuf { buf: vec![0; READ_CHUNK], start: 0, end: 0 }
    }

    /// The received bytes not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` bytes at the front as consumed.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_CAPACITY {
                self.buf = vec![0; READ_CHUNK];
            }
        }
    }

    /// One `read` call into the free space (made at least [`READ_CHUNK`] bytes first). Returns
    /// what `read` returned, and whether the read filled all of the space it was given (so that
    /// more bytes may be waiting).
    pub fn read_from(&mut self, src: &mut impl Read) -> io::Result<(usize, bool)> {
        if self.buf.len() - self.end < READ_CHUNK {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < READ_CHUNK {
                let grown = (self.buf.len() * 2).max(self.end + READ_CHUNK);
                self.buf.resize(grown, 0);
            }
        }
        let space = self.buf.len() - self.end;
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok((n, n == space))
    }
}

/// A slab: values stored under small integer keys, freed keys reused first.
pub(crate) struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    /// The key the next [`insert`](Self::insert) will return.
    pub fn vacant_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key).and_then(Option::as_mut)
    }

    pub fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.entries.get_mut(key)?.take()?;
        self.free.push(key);
        Some(value)
    }

    /// Removes and returns every value.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.free.clear();
        self.entries.drain(..).flatten()
    }

    /// The keys in use.
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries.iter().enumerate().filter(|(_, e)| e.is_some()).map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbuf_keeps_unconsumed_bytes_across_reads() {
        let mut b = InBuf::new();
        let mut src: &[u8] = &[1, 2, 3, 4, 5];
        assert_eq!(b.read_from(&mut src).unwrap(), (5, false));
        b.consume(2);
        assert_eq!(b.data(), &[3, 4, 5]);
        let big = vec![9u8; 3 * READ_CHUNK];
        let mut src: &[u8] = &big;
        let mut total = 0;
        while total < big.len() {
            total += b.read_from(&mut src).unwrap().0;
        }
        assert_eq!(b.data().len(), 3 + big.len());
        assert_eq!(&b.data()[..4], &[3, 4, 5, 9]);
        b.consume(b.data().len());
        assert!(b.data().is_empty());
    }

    #[test]
    fn slab_reuses_keys() {
        let mut s = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.insert("c"), a);
        assert_eq!(s.get_mut(b), Some(&mut "b"));
        assert_eq!(s.keys().collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(s.drain().count(), 2);
        assert_eq!(s.keys().count(), 0);
        assert_eq!(s.insert("d"), 0);
    }
}
