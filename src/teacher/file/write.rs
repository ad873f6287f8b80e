//! Writing a teacher file: rows streamed from their producers into the file as they are computed
//! ([`write_streamed`]), so `tagfix teacher` never holds 4 KiB per record in memory.

use super::{
    CHECK_ROWS, IMAGE_FEATURES, IMAGE_UNREADABLE, KEYS, TEACHER_DIM, TEACHER_SCHEMA, TEXT_FEATURES,
};
use crate::error::Result;
use crate::teacher::TeacherError;
use crate::tensors::safetensors_io::{self, StreamedTensor};
use crate::tensors::DType;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Where [`write_streamed`]'s row producers put their rows: row-major f32, any number of rows a
/// call, written to the file as they come.
pub struct RowSink<'w> {
    out: &'w mut dyn Write,
    rows: usize,
    bytes: Vec<u8>,
    /// Where the rows of unreadable images are noted: image rows of a file written with
    /// [`ImageRows::MayBeUnreadable`], else none.
    unreadable: Option<&'w RefCell<Vec<usize>>>,
}

impl RowSink<'_> {
    /// Writes a row of zeros for a record whose image could not be read, flagged in the file's
    /// `image_unreadable` tensor. Only image rows of a file that flags them take it.
    pub fn push_unreadable(&mut self) -> Result<()> {
        let Some(flagged) = self.unreadable else {
            return Err(TeacherError::UnflaggedRow { row: self.rows }.into());
        };
        flagged.borrow_mut().push(self.rows);
        self.push(&[0.0; TEACHER_DIM])
    }

    /// Writes whole rows (`values.len()` a multiple of 512).
    pub fn push(&mut self, values: &[f32]) -> Result<()> {
        debug_assert_eq!(values.len() % TEACHER_DIM, 0);
        for chunk in values.chunks(CHECK_ROWS * TEACHER_DIM) {
            self.bytes.clear();
            self.bytes
                .extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            self.out
                .write_all(&self.bytes)
                .map_err(|e| crate::Error::io("the teacher file", e))?;
        }
        self.rows += values.len() / TEACHER_DIM;
        Ok(())
    }
}

/// Whether the image rows of a file being written may stand for images that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRows {
    /// Every row is an image's features (no `image_unreadable` tensor).
    AllRead,
    /// Rows may be [`RowSink::push_unreadable`]'s zeros, flagged in `image_unreadable`.
    MayBeUnreadable,
}

/// Writes a teacher file atomically with rows that `image_rows` and then `text_rows` produce into a
/// [`RowSink`] (each exactly one row per key, in key order), so that `tagfix teacher` writes rows as
/// it computes them instead of holding 4 KiB per record in memory. An error of a producer is
/// returned as it is, and no file is left. With [`ImageRows::MayBeUnreadable`] the file also gets
/// the `image_unreadable` flags of the rows `image_rows` pushed as unreadable (all 0 when none).
pub fn write_streamed(
    path: &Path,
    keys: &[String],
    mut metadata: BTreeMap<String, String>,
    rows: ImageRows,
    image_rows: impl FnOnce(&mut RowSink) -> Result<()>,
    text_rows: impl FnOnce(&mut RowSink) -> Result<()>,
) -> Result<()> {
    metadata.insert("tagfix.schema".into(), TEACHER_SCHEMA.into());
    let keys_json = serde_json::to_vec(keys).expect("strings serialise");
    let n = keys.len();
    // A producer's own error is kept here and returned instead of the write's I/O error.
    let failure = RefCell::new(None);
    let unreadable = RefCell::new(Vec::new());
    let flagged = (rows == ImageRows::MayBeUnreadable).then_some(&unreadable);
    let mut tensors = vec![
        rows_tensor(IMAGE_FEATURES, n, &failure, flagged, image_rows),
        rows_tensor(TEXT_FEATURES, n, &failure, None, text_rows),
        StreamedTensor {
            name: KEYS.into(),
            dtype: DType::U8,
            shape: vec![keys_json.len()],
            write: Box::new(|w: &mut dyn Write| w.write_all(&keys_json)),
        },
    ];
    if let Some(flagged) = flagged {
        // Written after the image rows, which note the unreadable ones as they go.
        tensors.push(StreamedTensor {
            name: IMAGE_UNREADABLE.into(),
            dtype: DType::U8,
            shape: vec![n],
            write: Box::new(move |w: &mut dyn Write| {
                let mut flags = vec![0u8; n];
                // (Rows past `n` cannot be noted: the image rows' count was checked first.)
                for &row in flagged.borrow().iter() {
                    if let Some(flag) = flags.get_mut(row) {
                        *flag = 1;
                    }
                }
                w.write_all(&flags)
            }),
        });
    }
    let written = safetensors_io::write_streamed(path, tensors, &metadata);
    match failure.into_inner() {
        Some(e) => Err(e),
        None => written,
    }
}

/// A `[n, 512]` f32 tensor whose rows `produce` writes; its error, or a wrong row count, is kept in
/// `failure` (the write itself only sees an I/O error). Rows pushed as unreadable are noted in
/// `unreadable` (refused without it).
fn rows_tensor<'a>(
    name: &'static str,
    n: usize,
    failure: &'a RefCell<Option<crate::Error>>,
    unreadable: Option<&'a RefCell<Vec<usize>>>,
    produce: impl FnOnce(&mut RowSink) -> Result<()> + 'a,
) -> StreamedTensor<'a> {
    let mut produce = Some(produce);
    StreamedTensor {
        name: name.into(),
        dtype: DType::F32,
        shape: vec![n, TEACHER_DIM],
        write: Box::new(move |w: &mut dyn Write| {
            let produce = produce.take().expect("each tensor is written once");
            let mut sink = RowSink {
                out: w,
                rows: 0,
                bytes: Vec::new(),
                unreadable,
            };
            let done = produce(&mut sink).and_then(|()| match sink.rows {
                rows if rows == n => Ok(()),
                got => Err(TeacherError::RowCount {
                    name,
                    got,
                    expected: n,
                }
                .into()),
            });
            done.map_err(|e| {
                let message = e.to_string();
                *failure.borrow_mut() = Some(e);
                std::io::Error::other(message)
            })
        }),
    }
}
