//! Teacher features: the file format lives in [`crate::teacher::file`] (read here, written by
//! `tagfix teacher`); the online teacher in [`crate::teacher::online`].

pub use crate::teacher::file::*;
