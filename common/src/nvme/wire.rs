//! Little-endian field access that cannot panic: reads past the end give zeros and writes past
//! the end are dropped. Callers check lengths first; these helpers only make a slip harmless.

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(off..off + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

pub(crate) fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

pub(crate) fn put_bytes(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(off..off + v.len()) {
        s.copy_from_slice(v);
    }
}

/// Writes `s` into a fixed field of `len` bytes, truncated, the rest filled with `pad` (spaces
/// for Identify strings, NULs for NQNs and transport addresses).
pub(crate) fn put_str(b: &mut [u8], off: usize, len: usize, s: &str, pad: u8) {
    if let Some(field) = b.get_mut(off..off + len) {
        field.fill(pad);
        let n = s.len().min(len);
        field[..n].copy_from_slice(&s.as_bytes()[..n]);
    }
}

/// Reads a fixed text field: stops at the first NUL, drops trailing spaces, replaces bytes that
/// are not UTF-8.
pub(crate) fn str_at(b: &[u8], off: usize, len: usize) -> String {
    let field = b.get(off..off + len).unwrap_or(&[]);
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).trim_end_matches(' ').to_string()
}

/// Reads a NUL-terminated string field strictly: `None` if there is no terminator inside the
/// field or the text is not printable ASCII (NQNs must be both).
pub(crate) fn strict_str_at(b: &[u8], off: usize, len: usize) -> Option<String> {
    let field = b.get(off..off + len)?;
    let end = field.iter().position(|&c| c == 0)?;
    let text = &field[..end];
    if text.iter().all(|c| (0x20..0x7f).contains(c)) {
        Some(String::from_utf8_lossy(text).into_owned())
    } else {
        None
    }
}
