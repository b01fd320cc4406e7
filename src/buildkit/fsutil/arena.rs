//! Append-only storage in fixed-size chunks, for the per-file records a transfer keeps until
//! its end: the sender's table of sent entries and a local export's announced files.
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

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(index / ITEMS_PER_CHUNK)?
            .get_mut(index % ITEMS_PER_CHUNK)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn last(&self) -> Option<&T> {
        self.get(self.len.checked_sub(1)?)
    }

    /// The number of leading items for which `pred` holds, items being partitioned by it (as
    /// [`slice::partition_point`], across chunks).
    pub(crate) fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            match self.get(mid) {
                Some(item) if pred(item) => low = mid + 1,
                _ => high = mid,
            }
        }
        low
    }
}

/// Strings one after another in chunks of [`NAME_CHUNK`] bytes, each found by where it
/// begins (a 32-bit position: up to 4 GiB of text). A chunk is never filled to its last byte,
/// so a position always names a byte of one chunk, or the end of its text.
#[derive(Debug, Default)]
struct Names {
    chunks: Vec<String>,
}

impl Names {
    /// Appends `name` and returns where it begins; `None` for a name longer than
    /// [`MAX_NAME`] or past 4 GiB of names.
    fn push(&mut self, name: &str) -> Option<u32> {
        if name.len() > MAX_NAME {
            return None;
        }
        if self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.len() + name.len() >= NAME_CHUNK)
        {
            // The rest of the last chunk stays unused: a name never spans two.
            self.chunks.push(String::with_capacity(NAME_CHUNK));
        }
        let index = self.chunks.len() - 1;
        let chunk = self.chunks.last_mut()?;
        let start = index.checked_mul(NAME_CHUNK)?.checked_add(chunk.len())?;
        let start = u32::try_from(start).ok()?;
        chunk.push_str(name);
        Some(start)
    }

    /// The text from `start` to `next` (where the next name begins) or, when that is in a
    /// later chunk or there is none, to the end of `start`'s chunk.
    fn get(&self, start: u32, next: Option<u32>) -> Option<&str> {
        let (chunk, at) = (start as usize / NAME_CHUNK, start as usize % NAME_CHUNK);
        let text = self.chunks.get(chunk)?;
        let end = match next {
            Some(next) if next as usize / NAME_CHUNK == chunk => next as usize % NAME_CHUNK,
            _ => text.len(),
        };
        text.get(at..end)
    }
}

/// A list of strings that costs their bytes and 4 bytes each: a string ends where the next
/// one begins, so no length is kept.
#[derive(Debug, Default)]
pub(crate) struct Strings {
    text: Names,
    starts: Chunked<u32>,
}

impl Strings {
    /// Appends `s` and returns its index; `None` for a string longer than [`MAX_NAME`] or
    /// past 4 GiB of text.
    pub(crate) fn push(&mut self, s: &str) -> Option<usize> {
        let start = self.text.push(s)?;
        self.starts.push(start);
        Some(self.starts.len() - 1)
    }

    /// The string at `index`.
    pub(crate) fn get(&self, index: usize) -> Option<&str> {
        let start = *self.starts.get(index)?;
        self.text.get(start, self.starts.get(index + 1).copied())
    }

    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    pub(crate) fn last(&self) -> Option<&str> {
        self.get(self.len().checked_sub(1)?)
    }
}

/// A stretch of consecutive entries of a table that share a directory and have consecutive
/// ids: where it begins (the entry's index in the table), the first entry's id and the
/// directory's index.
#[derive(Debug, Clone, Copy)]
struct Run {
    first: u32,
    id: u32,
    dir: u32,
}

/// The directory and id of each entry of a table, as runs: walk order keeps a directory's
/// entries together (a subdirectory's only interrupt them once), so a table of files costs a
/// run per directory, not 8 bytes a file.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    runs: Chunked<Run>,
    len: usize,
}

impl Runs {
    /// Records the next entry (index [`Self::len`]): its id and directory. `None` past 2^32
    /// entries.
    pub(crate) fn push(&mut self, id: u32, dir: u32) -> Option<()> {
        let index = u32::try_from(self.len).ok()?;
        let continues = self
            .runs
            .last()
            .is_some_and(|r| r.dir == dir && id.checked_sub(r.id) == Some(index - r.first));
        if !continues {
            self.runs.push(Run {
                first: index,
                id,
                dir,
            });
        }
        self.len += 1;
        Some(())
    }

    /// The id and directory of entry `index`.
    pub(crate) fn get(&self, index: usize) -> Option<(u32, u32)> {
        if index >= self.len {
            return None;
        }
        let run = self
            .runs
            .partition_point(|r| r.first as usize <= index)
            .checked_sub(1)?;
        let run = self.runs.get(run)?;
        let offset = u32::try_from(index).ok()? - run.first;
        Some((run.id + offset, run.dir))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    /// Items keep their indices across chunk boundaries, and the search finds any place.
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
        assert_eq!(items.last(), Some(&((count - 1) * 2)));
        for probe in [0, 1, ITEMS_PER_CHUNK - 1, ITEMS_PER_CHUNK, count - 1, count] {
            assert_eq!(items.partition_point(|v| *v < probe * 2), probe);
        }
        *items.get_mut(1).unwrap() = 5;
        assert_eq!(items.get(1), Some(&5));
    }

    /// A name that does not fit the rest of a chunk starts the next one, whole, and each
    /// string ends where the next begins or where its chunk's text ends.
    #[test]
    fn strings_never_span_chunks() {
        let mut strings = Strings::default();
        let long = "x".repeat(NAME_CHUNK - 4);
        let items = [long.as_str(), "abc", "", "de", "", "f"];
        for (i, s) in items.iter().enumerate() {
            assert_eq!(strings.push(s), Some(i));
        }
        assert_eq!(strings.starts.get(1), Some(&(NAME_CHUNK as u32 - 4)));
        assert_eq!(
            strings.starts.get(3),
            Some(&(NAME_CHUNK as u32)),
            "de did not fit the 1 byte left"
        );
        for (i, s) in items.iter().enumerate() {
            assert_eq!(strings.get(i), Some(*s), "string {i}");
        }
        assert_eq!(strings.get(items.len()), None);
        assert_eq!(strings.last(), Some("f"));
        assert!(strings.push(&"y".repeat(MAX_NAME + 1)).is_none());
        assert!(strings.push(&"y".repeat(MAX_NAME)).is_some());
        assert_eq!(strings.last().map(str::len), Some(MAX_NAME));
    }

    /// Entries in one directory with consecutive ids share a run; each is found again.
    #[test]
    fn runs_give_back_ids_and_directories() {
        let mut runs = Runs::default();
        let entries = [
            (0, 7),
            (1, 7),
            (2, 7),
            (4, 7),
            (5, 9),
            (6, 9),
            (7, 7),
            (8, 7),
        ];
        for (id, dir) in entries {
            runs.push(id, dir).unwrap();
        }
        assert_eq!(
            runs.runs.len(),
            4,
            "a gap in the ids or a new directory starts a run"
        );
        for (index, entry) in entries.iter().enumerate() {
            assert_eq!(runs.get(index), Some(*entry));
        }
        assert_eq!(runs.get(entries.len()), None);
    }
}
