//! Kernel modules in dependency order. A Debian kernel ships vsock, the
//! virtio transports and btrfs as modules, and the vsock listener cannot
//! bind until they are in; the reference's kernel had CONFIG_MODULES=n so
//! it never needed this. `modules.dep` lists each module's dependencies
//! (all of them, but not in load order), so the order is a depth-first
//! topological sort. Modules already loaded or built in are left alone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::sys::{FileOps, ModuleLoader, ModuleOutcome, SysError};

/// Errors resolving or loading modules.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A module is neither built in nor listed in modules.dep.
    #[error("module {name} is not built in and not in {dep_file}")]
    NotFound {
        /// The module.
        name: String,
        /// The modules.dep consulted.
        dep_file: PathBuf,
    },
    /// modules.dep has a dependency cycle.
    #[error("dependency cycle through module {0}")]
    Cycle(String),
    /// Reading an index or inserting a module failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// The canonical module name of a path or name: file stem, `-` as `_`.
pub fn module_name(path_or_name: &str) -> String {
    let file = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// modules.dep and modules.builtin of one kernel release.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    dir: PathBuf,
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Parses the index texts; `dir` is `/lib/modules/<release>`.
    pub fn parse(dir: &Path, modules_dep: &str, modules_builtin: &str) -> Self {
        let mut deps = HashMap::new();
        for line in modules_dep.lines() {
            let Some((path, rest)) = line.split_once(':') else { continue };
            let path = path.trim();
            let list = rest.split_whitespace().map(module_name).collect();
            deps.insert(module_name(path), (path.to_owned(), list));
        }
        let builtin =
            modules_builtin.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect();
        Self { dir: dir.to_path_buf(), deps, builtin }
    }

    /// Reads the index under `dir` through `files`; modules.builtin may be absent.
    pub fn read(files: &dyn FileOps, dir: &Path) -> Result<Self, ModuleError> {
        let dep = files.read_to_string(&dir.join("modules.dep"))?;
        let builtin = files.read_to_string(&dir.join("modules.builtin")).unwrap_or_default();
        Ok(Self::parse(dir, &dep, &builtin))
    }

    /// Whether `name` is compiled into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// The `.ko` files to insert for `wanted`, dependencies first, leaving
    /// out built-in modules and those in `loaded`.
    pub fn load_order(
        &self,
        wanted: &[String],
        loaded: &HashSet<String>,
    ) -> Result<Vec<PathBuf>, ModuleError> {
        let mut order = Vec::new();
        let mut done: HashSet<String> = loaded.iter().map(|n| module_name(n)).collect();
        let mut visiting = HashSet::new();
        for name in wanted {
            self.visit(&module_name(name), &mut done, &mut visiting, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        visiting: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        let Some((path, deps)) = self.deps.get(name) else {
            return Err(ModuleError::NotFound { name: name.into(), dep_file: self.dir.join("modules.dep") });
        };
        if !visiting.insert(name.to_owned()) {
            return Err(ModuleError::Cycle(name.into()));
        }
        for dep in deps {
            self.visit(dep, done, visiting, order)?;
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        order.push(self.dir.join(path));
        Ok(())
    }
}

/// Names of the modules in /proc/modules text.
pub fn parse_proc_modules(text: &str) -> HashSet<String> {
    text.lines().filter_map(|l| l.split_whitespace().next()).map(module_name).collect()
}

/// What loading a set of modules did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Modules inserted now, in order.
    pub loaded: Vec<String>,
    /// Wanted modules that needed nothing (built in or loaded before).
    pub present: Vec<String>,
}

/// Loads `wanted` (and dependencies) from `index` in dependency order.
pub fn load_modules(
    index: &ModuleIndex,
    loader: &dyn ModuleLoader,
    wanted: &[String],
    loaded: &HashSet<String>,
) -> Result<LoadReport, ModuleError> {
    let order = index.load_order(wanted, loaded)?;
    let mut report = LoadReport::default();
    let inserted: HashSet<String> = order.iter().map(|p| module_name(&p.to_string_lossy())).collect();
    for path in &order {
        if loader.finit_module(path, "")? == ModuleOutcome::Loaded {
            report.loaded.push(module_name(&path.to_string_lossy()));
        }
    }
    report.present = wanted.iter().map(|w| module_name(w)).filter(|w| !inserted.contains(w)).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/net/vmw_vsock/vsock.ko\n\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n\
kernel/net/vmw_vsock/vsock.ko:\n\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
kernel/fs/a.ko: kernel/fs/b.ko\n\
kernel/fs/b.ko: kernel/fs/a.ko\n";

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| module_name(&p.to_string_lossy())).collect()
    }

    fn index() -> ModuleIndex {
        ModuleIndex::parse(Path::new("/lib/modules/6.1"), DEP, "kernel/fs/ext4/ext4.ko\n")
    }

    #[test]
    fn dependencies_load_before_the_modules_that_need_them() {
        let order = index()
            .load_order(&["virtio_pci".into(), "vmw_vsock_virtio_transport".into()], &HashSet::new())
            .unwrap();
        let order = names(&order);
        let pos = |n: &str| order.iter().position(|m| m == n).unwrap();
        assert_eq!(order.len(), 8, "{order:?}");
        assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("virtio_pci"));
        assert!(pos("virtio_pci_modern_dev") < pos("virtio_pci"));
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
        assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
    }

    #[test]
    fn loaded_and_builtin_modules_are_left_out() {
        let loaded =
            parse_proc_modules("virtio_ring 45056 3 - Live 0x0\nvirtio 16384 2 virtio_pci, Live 0x0\n");
        let order = index().load_order(&["virtio_pci".into(), "ext4".into()], &loaded).unwrap();
        assert_eq!(names(&order), ["virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci"]);
        assert!(index().is_builtin("ext4"));
        assert_eq!(order[2], Path::new("/lib/modules/6.1/kernel/drivers/virtio/virtio_pci.ko"));
    }

    #[test]
    fn unknown_modules_and_cycles_are_errors() {
        assert!(matches!(
            index().load_order(&["nope".into()], &HashSet::new()),
            Err(ModuleError::NotFound { .. })
        ));
        assert!(matches!(index().load_order(&["a".into()], &HashSet::new()), Err(ModuleError::Cycle(_))));
    }

    #[test]
    fn names_normalise_dashes_and_compressed_suffixes() {
        assert_eq!(module_name("kernel/drivers/net/virtio-net.ko.xz"), "virtio_net");
        assert_eq!(module_name("vsock"), "vsock");
    }
}
