//! What `make images` builds (OCI image layouts in `target/images/`, or `WIPGATE_IMAGES`):
//! the filter's Wasm image carries the module unchanged as its content layer (layer digest =
//! the module's sha256) and the WasmPlugin generated beside it pins that image's digest; the
//! control service's image is one layer with only a static binary, run as a non-root user.
//! `make images` runs these (they read its output, so a plain `cargo test` lists them as
//! ignored).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

const IMAGES_ENV: &str = "WIPGATE_IMAGES";
const MODULE_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
const RUNTIME_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn images() -> PathBuf {
    std::env::var_os(IMAGES_ENV).map_or_else(|| root().join("target/images"), PathBuf::from)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One OCI image layout: its blobs checked against their names as they are read.
struct Layout(PathBuf);

impl Layout {
    fn open(name: &str) -> Self {
        let dir = images().join(name);
        assert!(
            dir.join("index.json").is_file(),
            "{} has no OCI layout: run `make images`",
            dir.display()
        );
        Self(dir)
    }

    /// The blob a descriptor points at, after checking its digest and size.
    fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = descriptor["digest"].as_str().unwrap();
        let hex = digest.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(self.0.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(
            hex_sha256(&bytes),
            hex,
            "blob {digest} does not hash to its name"
        );
        assert_eq!(
            descriptor["size"].as_u64(),
            Some(bytes.len() as u64),
            "{digest}"
        );
        bytes
    }

    fn json(&self, descriptor: &Value) -> Value {
        serde_json::from_slice(&self.blob(descriptor)).unwrap()
    }

    /// The one manifest of `index.json`, its descriptor and content.
    fn manifest(&self, tag: &str) -> (Value, Value) {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.0.join("index.json")).unwrap()).unwrap();
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{index}");
        let descriptor = manifests[0].clone();
        assert_eq!(
            descriptor["annotations"]["org.opencontainers.image.ref.name"],
            tag
        );
        let manifest = self.json(&descriptor);
        (descriptor, manifest)
    }
}

/// The workspace version (`[workspace.package]`), the images' tag.
fn version() -> String {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let line = text.lines().find(|l| l.starts_with("version = ")).unwrap();
    line.trim_start_matches("version = ")
        .trim_matches('"')
        .to_owned()
}

#[test]
#[ignore = "needs make images"]
fn the_filter_image_carries_the_module_as_its_layer_and_the_wasmplugin_pins_it() {
    let module_path = std::env::var_os("WIPGATE_WASM").map_or_else(
        || root().join("target/wasm32-wasip1/release/wipgate_filter.wasm"),
        PathBuf::from,
    );
    let module = std::fs::read(&module_path).unwrap();
    let layout = Layout::open("wipgate-filter");
    let (descriptor, manifest) = layout.manifest(&version());

    // Istio's *oci* variant: two layers, the runtime config and the module, as it is.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{manifest}");
    assert_eq!(layers[0]["mediaType"], RUNTIME_CONFIG);
    let runtime_config = layout.json(&layers[0]);
    assert_eq!(runtime_config["type"], "envoy_proxy");
    assert_eq!(runtime_config["config"]["root_ids"][0], "wipgate");
    assert_eq!(layers[1]["mediaType"], MODULE_LAYER);
    let module_sha = hex_sha256(&module);
    assert_eq!(layers[1]["digest"], format!("sha256:{module_sha}"));
    assert_eq!(layout.blob(&layers[1]), module);
    assert_eq!(manifest["config"]["mediaType"], RUNTIME_CONFIG);
    layout.blob(&manifest["config"]);

    // For an oci:// URL Istio checks `sha256` against the image (manifest) digest.
    let text = std::fs::read_to_string(images().join("wasmplugin.yaml")).unwrap();
    let plugin = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "WasmPlugin")
        .unwrap();
    let digest = descriptor["digest"].as_str().unwrap();
    assert_eq!(
        plugin["spec"]["sha256"].as_str(),
        digest.strip_prefix("sha256:")
    );
    let url = plugin["spec"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("oci://") && url.ends_with(&format!("/wipgate-filter:{}", version())),
        "{url}"
    );
}

/// Whether an ELF executable asks for a dynamic loader (has a `PT_INTERP` program header).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..usize::from(phnum)).any(|i| {
        let header = phoff + i * usize::from(phentsize);
        u32::from_le_bytes(elf[header..header + 4].try_into().unwrap()) == 3
    })
}

#[test]
#[ignore = "needs make images"]
fn the_control_image_is_one_static_binary_run_as_a_non_root_user() {
    let layout = Layout::open("wipgate-control");
    let (_, manifest) = layout.manifest(&version());
    let config = layout.json(&manifest["config"]);
    assert_eq!(config["os"], "linux");
    let user = config["config"]["User"].as_str().unwrap();
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "runs as root: {user}");
    assert_eq!(config["config"]["Entrypoint"][0], "/wipgate-control");

    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let tar = std::env::temp_dir().join(format!("wipgate-layer-{}.tar.gz", std::process::id()));
    std::fs::write(&tar, layout.blob(&layers[0])).unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tar)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap();
    std::fs::remove_file(&tar).unwrap();
    assert!(status.success());
    let entries: Vec<String> = std::fs::read_dir(unpacked.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        ["wipgate-control"],
        "no shell, nothing but the binary"
    );
    let binary = std::fs::read(unpacked.path().join("wipgate-control")).unwrap();
    assert!(
        !has_interpreter(&binary),
        "the binary is dynamically linked"
    );
}

#[test]
fn a_dynamically_linked_executable_has_an_interpreter() {
    // The test binary itself is a glibc build: the check must see its loader.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(has_interpreter(&me));
}
