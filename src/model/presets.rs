//! The presets built into the binary: `--model mlp` works from any directory, with an
//! installed binary and no source tree. A path to a TOML file still works, and wins when a
//! file of that name exists.
//!
//! The built-in presets are the files of `models/`, compiled in; a test checks that the two
//! never drift apart.

use crate::error::{Error, Result};
use crate::model::spec::{LayerSpec, ModelSpec};
use std::path::Path;

/// A preset compiled into the binary.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// The name `--model` takes (the file's stem in `models/`).
    pub name: &'static str,
    /// The preset's TOML text.
    pub toml: &'static str,
}

/// Every built-in preset, by name.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "cnn",
        toml: include_str!("../../models/cnn.toml"),
    },
    Preset {
        name: "logreg",
        toml: include_str!("../../models/logreg.toml"),
    },
    Preset {
        name: "mlp",
        toml: include_str!("../../models/mlp.toml"),
    },
    Preset {
        name: "mlp-image",
        toml: include_str!("../../models/mlp-image.toml"),
    },
];

/// The built-in preset called `name`, if there is one.
pub fn built_in(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The names of the built-in presets, for messages.
pub fn names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Preset {
    /// The preset, parsed and checked (a test checks every built-in one parses).
    pub fn spec(&self) -> Result<ModelSpec> {
        ModelSpec::from_toml(self.toml, &format!("built-in preset '{}'", self.name))
    }
}

impl ModelSpec {
    /// The preset `--model` names: the TOML file at `arg` if one exists, else the built-in
    /// preset of that name. Neither is an error that lists the built-in names.
    pub fn resolve(arg: &Path) -> Result<ModelSpec> {
        if arg.exists() {
            return ModelSpec::load(arg);
        }
        let name = arg.to_str().unwrap_or_default();
        match built_in(name) {
            Some(p) => p.spec(),
            None => Err(Error::Config(format!(
                "--model {}: no such file, and no built-in preset of that name (the built-in \
                 presets are {}; `sisa models` lists their layers)",
                arg.display(),
                names()
            ))),
        }
    }
}

/// One line per layer of `spec` as `sisa models` prints it, the output layer (dense to the
/// class count, softmax) last.
pub fn layer_lines(spec: &ModelSpec) -> Vec<String> {
    let mut lines: Vec<String> = spec.hidden_layers().iter().map(layer_text).collect();
    lines.push("dense (classes), softmax".into());
    lines
}

/// A layer in words: `conv2d 32 3x3`, `maxpool2d 2`, `dense 128`.
pub fn layer_text(layer: &LayerSpec) -> String {
    match layer {
        LayerSpec::Dense { units } => format!("dense {units}"),
        LayerSpec::Conv2d {
            filters,
            kernel,
            stride,
            padding,
        } => {
            let mut t = format!("conv2d {filters} {kernel}x{kernel}");
            if *stride != 1 {
                t += &format!(" stride {stride}");
            }
            if *padding != 0 {
                t += &format!(" padding {padding}");
            }
            t
        }
        LayerSpec::Maxpool2d { size } => format!("maxpool2d {size}"),
        LayerSpec::Flatten => "flatten".into(),
        LayerSpec::Relu => "relu".into(),
        LayerSpec::Tanh => "tanh".into(),
        LayerSpec::Dropout { rate } => format!("dropout {rate}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_preset_parses_and_equals_its_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
            .collect();
        files.sort();
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        assert_eq!(files, names, "every file in models/ is built in, in order");
        for p in PRESETS {
            let spec = p.spec().unwrap();
            assert_eq!(spec.name, p.name);
            let mut file = ModelSpec::load(&dir.join(format!("{}.toml", p.name))).unwrap();
            file.source = spec.source.clone();
            assert_eq!(spec, file, "{}", p.name);
            assert!(!layer_lines(&spec).is_empty());
        }
    }

    #[test]
    fn a_path_wins_and_an_unknown_name_lists_the_presets() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("mlp");
        let mlp = built_in("mlp")
            .unwrap()
            .toml
            .replace("name = \"mlp\"", "name = \"mine\"");
        std::fs::write(&own, mlp).unwrap();
        assert_eq!(ModelSpec::resolve(&own).unwrap().name, "mine");
        assert_eq!(ModelSpec::resolve(Path::new("mlp")).unwrap().name, "mlp");
        let e = ModelSpec::resolve(Path::new("mpl"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mpl") && e.contains("cnn, logreg, mlp, mlp-image"),
            "{e}"
        );
    }
}
