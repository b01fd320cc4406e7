//! Append-only storage in fixed-size chunks, for the per-file records a transfer keeps until
//! its end (a local export's announced files).
//!
//! A `Vec` or `String` that doubles copies itself into a new buffer each time, and the old
//! buffers stay with the allocator: below its mmap threshold they are heap memory that stays
//! resident. A 1,000,000-file local export peaked at 80 MiB that way, for 36 MB of records and
//! paths. Chunks are never moved, so what these hold is what they cost, and a freed chunk is
//! the size the next table asks for.

/// Items per chunk of a [`Chunked`]: 4,096 records of 20 bytes is an 80 KiB chunk.
const ITEMS_PER_CHUNK: usize = 4096;

/// Bytes per chunk of [`Names`].
const NAME_CHUNK: usize = 64 << 10;

/// The longest name [`Names`] takes (its length fits in 16 bits; a chunk holds it whole).
pub(crate) const MAX_NAME: usize = u16::MAX as usize;

/// A vector that grows a chunk at a time and never moves what it holds.
#[derive(Debug)]
pub(crate) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub(crate) fn push(&mut self, item: T) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < ITEMS_PER_CHUNK => chunk.push(item),
            _ => {
                let mut chunk = Vec::with_capacity(ITEMS_PER_CHUNK);
                chunk.push(item);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        self.chunks
            .get(index / ITEMS_PER_CHUNK)?
            .get(index % ITEMS_PER_CHUNK)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Binary search over items sorted by `f` (as [`slice::binary_search_by`], across chunks).
    pub(crate) fn binary_search_by(
        &self,
        mut f: impl FnMut(&T) -> std::cmp::Ordering,
    ) -> Option<&T> {
        use std::cmp::Ordering;
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            let item = self.get(mid)?;
            match f(item) {
                Ordering::Less => low = mid + 1,
                Ordering::Greater => high = mid,
                Ordering::Equal => return Some(item),
            }
        }
        None
    }
}

/// Strings one after another in chunks of [`NAME_CHUNK`] bytes, each found by where it
/// begins (a 32-bit offset: up to 4 GiB of names) and its length.
#[derive(Debug, Default)]
pub(crate) struct Names {
    chunks: Vec<String>,
}

impl Names {
    /// Appends `name` and returns where it begins; `None` for a name longer than
    /// [`MAX_NAME`] or past 4 GiB of names.
    pub(crate) fn push(&mut self, name: &str) -> Option<u32> {
        if name.len() > MAX_NAME {
            return None;
        }
        if self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.len() + name.len() > NAME_CHUNK)
        {
            // The rest of the last chunk stays unused: a name never spans two.
            self.chunks.push(String::with_capacity(NAME_CHUNK));
        }
        let index = self.chunks.len() - 1;
        let chunk = self.chunks.last_mut()?;
        let start = index.checked_mul(NAME_CHUNK)?.checked_add(chunk.len())?;
        let start = u32::try_from(start).ok()?;
        u32::try_from(start as usize + name.len()).ok()?;
        chunk.push_str(name);
        Some(start)
    }

    /// The name that begins at `start` and is `len` bytes long.
    pub(crate) fn get(&self, start: u32, len: usize) -> Option<&str> {
        let start = start as usize;
        let chunk = self.chunks.get(start / NAME_CHUNK)?;
        let at = start % NAME_CHUNK;
        chunk.get(at..at.checked_add(len)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    /// Items keep their indices across chunk boundaries, and the search finds any of them.
    #[test]
    fn chunked_items_keep_their_places() {
        let mut items = Chunked::default();
        let count = ITEMS_PER_CHUNK * 2 + 3;
        for i in 0..count {
            items.push(i * 2);
        }
        assert_eq!(items.len(), count);
        assert_eq!(items.get(ITEMS_PER_CHUNK), Some(&(ITEMS_PER_CHUNK * 2)));
        assert_eq!(items.get(count), None);
        for probe in [0, 1, ITEMS_PER_CHUNK - 1, ITEMS_PER_CHUNK, count - 1] {
            let found = items.binary_search_by(|v| v.cmp(&(probe * 2)));
            assert_eq!(found, Some(&(probe * 2)));
        }
        assert_eq!(items.binary_search_by(|v| v.cmp(&3)), None);
        assert_eq!(items.binary_search_by(|v| v.cmp(&(count * 2))), None);
    }

    /// A name that does not fit the rest of a chunk starts the next one, whole.
    #[test]
    fn names_never_span_chunks() {
        let mut names = Names::default();
        let long = "x".repeat(NAME_CHUNK - 2);
        let a = names.push(&long).unwrap();
        let b = names.push("abc").unwrap();
        let c = names.push("de").unwrap();
        assert_eq!(a, 0);
        assert_eq!(b as usize, NAME_CHUNK, "abc did not fit the 2 bytes left");
        assert_eq!(names.get(a, long.len()), Some(long.as_str()));
        assert_eq!(names.get(b, 3), Some("abc"));
        assert_eq!(names.get(c, 2), Some("de"));
        assert_eq!(names.get(c, 3), None);
        assert!(names.push(&"y".repeat(MAX_NAME + 1)).is_none());
        assert!(names.push(&"y".repeat(MAX_NAME)).is_some());
    }
}
