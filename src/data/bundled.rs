//! The datasets compiled into the binary, so that `sisa quickstart` and `sisa bench` run from
//! an installed binary in any directory, without the source tree: the bundled digits (the
//! quickstart's data) and the MNIST subset (the benchmark's data when Debian's Fashion-MNIST
//! is not installed). The bytes are exactly the files of `datasets/`; a test checks it.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A bundled dataset: its folder name under `datasets/` and its files.
#[derive(Clone, Copy, Debug)]
pub struct Bundled {
    /// Folder name (`digits`, `mnist-5k`).
    pub name: &'static str,
    /// File names in the folder, with their bytes.
    pub files: &'static [(&'static str, &'static [u8])],
}

/// The scikit-learn digits (1,797 images of 8×8, 10 classes), split by user into train and
/// test CSV files.
pub const DIGITS: Bundled = Bundled {
    name: "digits",
    files: &[
        (
            "train.csv",
            include_bytes!("../../datasets/digits/train.csv"),
        ),
        ("test.csv", include_bytes!("../../datasets/digits/test.csv")),
    ],
};

/// A 5,000-image subset of MNIST (train) and 1,000 (test), gzipped CSV.
pub const MNIST_5K: Bundled = Bundled {
    name: "mnist-5k",
    files: &[
        (
            "train.csv.gz",
            include_bytes!("../../datasets/mnist-5k/train.csv.gz"),
        ),
        (
            "test.csv.gz",
            include_bytes!("../../datasets/mnist-5k/test.csv.gz"),
        ),
    ],
};

impl Bundled {
    /// Write the dataset's files into `root/<name>/` (created), and return that folder.
    pub fn write_under(&self, root: &Path) -> Result<PathBuf> {
        let dir = root.join(self.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (file, bytes) in self.files {
            let path = dir.join(file);
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_bytes_are_the_files_of_datasets() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
        for set in [DIGITS, MNIST_5K] {
            for (file, bytes) in set.files {
                let on_disk = std::fs::read(root.join(set.name).join(file)).unwrap();
                assert!(on_disk == *bytes, "{}/{file}", set.name);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let written = DIGITS.write_under(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(written.join("train.csv")).unwrap(),
            DIGITS.files[0].1
        );
    }
}
