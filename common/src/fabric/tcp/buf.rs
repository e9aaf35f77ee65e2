//! The receive buffer shared by the NIC and the client: frames are decoded from it in place.

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
        let space = self.make_room();
        let n = self.read_with(|buf| src.read(buf))?;
        Ok((n, n == space))
    }

    /// Like [`read_from`](Self::read_from), for sources that are not [`Read`] (a non-blocking
    /// socket's `try_read`): `read` is given the free space and returns how much it filled.
    pub fn read_with(&mut self, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<usize> {
        self.make_room();
        let n = read(&mut self.buf[self.end..])?;
        self.end += n.min(self.buf.len() - self.end);
        Ok(n)
    }

    /// Makes at least [`READ_CHUNK`] bytes free after the data; returns the free space.
    fn make_room(&mut self) -> usize {
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
        self.buf.len() - self.end
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
}
