//! What the dynamic loader needs to know about an ELF file: its loader
//! (`PT_INTERP`), the libraries it names (`DT_NEEDED`) and where it says to
//! look for them (`DT_RUNPATH`, `DT_RPATH`).
//!
//! 64-bit little-endian only (x86_64 Linux). Every read is bounded and made
//! at an offset, so a 100 MB program costs a few KiB of reads, and a
//! truncated or hostile file gives an error naming it, never a panic or a
//! huge allocation.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

// ELF64 layout (see `<elf.h>`): this module is the one place that knows it,
// for reading (the loader's view, [`read`]; a whole file in memory,
// [`program_header_table`]) and for writing ([`write_headers`], used by the
// kernel slimming in `crate::image`).
pub(crate) const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELF64_EHDR_LEN: usize = 64;
const ELF64_PHDR_LEN: usize = 56;
const ELF64_DYN_LEN: usize = 16;
const E_TYPE: usize = 0x10;
const E_MACHINE: usize = 0x12;
const E_PHOFF: usize = 0x20;
const E_SHOFF: usize = 0x28;
const E_PHENTSIZE: usize = 0x36;
const E_PHNUM: usize = 0x38;
const E_SHENTSIZE: usize = 0x3a;

pub(crate) const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// `e_type` of an executable and of a shared object (or PIE).
pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;

/// Most program headers read (real programs have about 15).
const MAX_PHNUM: usize = 256;
/// Largest dynamic section read (real ones are a few hundred bytes).
const MAX_DYNAMIC_BYTES: u64 = 64 * 1024;
/// Longest `PT_INTERP` path and longest string read from `.dynstr`
/// (PATH_MAX).
const MAX_STRING: usize = 4096;

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElfInfo {
    /// `e_type`: [`ET_EXEC`], [`ET_DYN`], ...
    pub elf_type: u16,
    /// `e_machine` (62 for x86_64).
    pub machine: u16,
    /// The dynamic loader named by `PT_INTERP` (programs only).
    pub interp: Option<PathBuf>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// File offset of each `DT_NEEDED` string (same order as `needed`).
    pub needed_at: Vec<u64>,
    /// `DT_RUNPATH`, split at ':' (unexpanded: `$ORIGIN` stays).
    pub runpath: Vec<String>,
    /// `DT_RPATH`, split at ':' (unexpanded).
    pub rpath: Vec<String>,
}

/// Why a file could not be read as ELF.
#[derive(Debug)]
pub enum ElfError {
    /// Open or read failed.
    Io(PathBuf, io::Error),
    /// Not an ELF file at all (callers treat these as plain data).
    NotElf(PathBuf),
    /// ELF, but not one this reader handles, or malformed.
    Bad(PathBuf, String),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Io(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ElfError::NotElf(p) => write!(f, "{} is not an ELF file", p.display()),
            ElfError::Bad(p, why) => write!(f, "{}: {why}", p.display()),
        }
    }
}

impl std::error::Error for ElfError {}

struct Reader<'a> {
    file: File,
    len: u64,
    path: &'a Path,
}

impl Reader<'_> {
    fn bad(&self, why: impl Into<String>) -> ElfError {
        ElfError::Bad(self.path.to_path_buf(), why.into())
    }

    /// `n` bytes at `off`, which must lie inside the file.
    fn bytes(&self, off: u64, n: usize, what: &str) -> Result<Vec<u8>, ElfError> {
        let end = off.checked_add(n as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(self.bad(format!(
                "{what} at offset {off} ({n} bytes) lies past the end of the file ({} bytes)",
                self.len
            )));
        }
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(|e| ElfError::Io(self.path.to_path_buf(), e))?;
        Ok(buf)
    }

    /// A NUL-terminated string at `off`, at most `max` bytes, not past `limit`.
    fn string(&self, off: u64, limit: u64, what: &str) -> Result<String, ElfError> {
        let avail = limit.min(self.len).saturating_sub(off);
        let n = (avail as usize).min(MAX_STRING);
        let buf = self.bytes(off, n, what)?;
        let end = buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.bad(format!("{what} at offset {off} is not NUL-terminated")))?;
        String::from_utf8(buf[..end].to_vec())
            .map_err(|_| self.bad(format!("{what} at offset {off} is not UTF-8")))
    }
}

/// Little-endian integers at offset `o` of `b` (which must hold them).
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// One ELF64 program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProgramHeader {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

impl ProgramHeader {
    /// The header in `b` (at least [`ELF64_PHDR_LEN`] bytes).
    fn parse(b: &[u8]) -> ProgramHeader {
        ProgramHeader {
            p_type: u32_at(b, 0),
            p_flags: u32_at(b, 4),
            p_offset: u64_at(b, 8),
            p_vaddr: u64_at(b, 16),
            p_paddr: u64_at(b, 24),
            p_filesz: u64_at(b, 32),
            p_memsz: u64_at(b, 40),
            p_align: u64_at(b, 48),
        }
    }

    /// Appends the header's [`ELF64_PHDR_LEN`] bytes to `out`.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.p_type.to_le_bytes());
        out.extend_from_slice(&self.p_flags.to_le_bytes());
        for v in [
            self.p_offset,
            self.p_vaddr,
            self.p_paddr,
            self.p_filesz,
            self.p_memsz,
            self.p_align,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Whether `b` starts with a whole little-endian ELF64 file header.
fn is_elf64_le(b: &[u8]) -> bool {
    b.len() >= ELF64_EHDR_LEN
        && b.starts_with(ELF_MAGIC)
        && b[EI_CLASS] == ELFCLASS64
        && b[EI_DATA] == ELFDATA2LSB
}

/// The program headers of the little-endian ELF64 file `elf` (the whole file
/// in memory), checked against its size: the table and every segment's file
/// data lie inside it, and no `PT_LOAD` has more file data than memory.
pub(crate) fn program_header_table(elf: &[u8]) -> Result<Vec<ProgramHeader>, String> {
    if !is_elf64_le(elf) {
        return Err("not a little-endian ELF64 file (expected an uncompressed vmlinux)".into());
    }
    let phoff = u64_at(elf, E_PHOFF);
    let (phentsize, phnum) = (u16_at(elf, E_PHENTSIZE), u16_at(elf, E_PHNUM) as usize);
    if usize::from(phentsize) != ELF64_PHDR_LEN {
        return Err(format!(
            "program header size {phentsize}, expected {ELF64_PHDR_LEN}"
        ));
    }
    let table = usize::try_from(phoff)
        .ok()
        .and_then(|start| Some(start..start.checked_add(phnum.checked_mul(ELF64_PHDR_LEN)?)?))
        .filter(|r| r.end <= elf.len())
        .ok_or("program header table lies outside the file")?;
    let phdrs: Vec<ProgramHeader> = elf[table]
        .chunks_exact(ELF64_PHDR_LEN)
        .map(ProgramHeader::parse)
        .collect();
    for (i, p) in phdrs.iter().enumerate() {
        let end = p.p_offset.checked_add(p.p_filesz);
        if end.is_none_or(|e| e > elf.len() as u64) {
            return Err(format!("segment {i}: file data lies outside the file"));
        }
        if p.p_type == PT_LOAD && p.p_filesz > p.p_memsz {
            return Err(format!("segment {i}: filesz is larger than memsz"));
        }
    }
    Ok(phdrs)
}

/// Where the data of a file written by [`write_headers`] with `phnum`
/// program headers may start: right after its header table.
pub(crate) fn headers_end(phnum: usize) -> u64 {
    (ELF64_EHDR_LEN + phnum * ELF64_PHDR_LEN) as u64
}

/// The start of a new ELF64 file: the file header of `like` (an ELF64 file
/// accepted by [`program_header_table`]: entry point, machine, flags), with
/// `phdrs` as its program header table right after it and no section
/// headers; the segments' data goes after [`headers_end`].
pub(crate) fn write_headers(like: &[u8], phdrs: &[ProgramHeader]) -> Result<Vec<u8>, String> {
    if !is_elf64_le(like) {
        return Err("not a little-endian ELF64 file header".into());
    }
    let phnum = u16::try_from(phdrs.len()).map_err(|_| "too many program headers".to_string())?;
    let mut out = Vec::with_capacity(headers_end(phdrs.len()) as usize);
    out.extend_from_slice(&like[..ELF64_EHDR_LEN]);
    out[E_PHOFF..E_PHOFF + 8].copy_from_slice(&(ELF64_EHDR_LEN as u64).to_le_bytes());
    out[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&(ELF64_PHDR_LEN as u16).to_le_bytes());
    out[E_PHNUM..E_PHNUM + 2].copy_from_slice(&phnum.to_le_bytes());
    // No section headers: e_shoff, e_shentsize, e_shnum, e_shstrndx = 0.
    out[E_SHOFF..E_SHOFF + 8].fill(0);
    out[E_SHENTSIZE..ELF64_EHDR_LEN].fill(0);
    for p in phdrs {
        p.write(&mut out);
    }
    Ok(out)
}

/// Reads what the loader needs from the ELF file at `path`.
pub fn read(path: &Path) -> Result<ElfInfo, ElfError> {
    let io_err = |e| ElfError::Io(path.to_path_buf(), e);
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let r = Reader { file, len, path };
    let eh = r.elf_header()?;
    let mut info = ElfInfo {
        elf_type: u16_at(&eh, E_TYPE),
        machine: u16_at(&eh, E_MACHINE),
        ..ElfInfo::default()
    };
    let phdrs = r.program_headers(&eh)?;
    if let Some(p) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
        let limit = p.p_offset.saturating_add(p.p_filesz);
        info.interp = Some(PathBuf::from(r.string(p.p_offset, limit, "PT_INTERP")?));
    }
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        return Ok(info);
    };
    let dynamic = r.dynamic_section(dynamic)?;
    if dynamic.entries.is_empty() {
        return Ok(info);
    }
    let (str_off, strsz) = r.string_table(&phdrs, &dynamic)?;
    r.add_dynamic_strings(&mut info, dynamic.entries, str_off, strsz)?;
    Ok(info)
}

/// The entries of a dynamic section that [`read`] uses.
struct Dynamic {
    /// `DT_NEEDED`, `DT_RPATH` and `DT_RUNPATH` entries as (tag, string offset).
    entries: Vec<(u64, u64)>,
    strtab: Option<u64>,
    strsz: Option<u64>,
}

impl Reader<'_> {
    /// The ELF header, checked to be a 64-bit little-endian ELF file's.
    fn elf_header(&self) -> Result<Vec<u8>, ElfError> {
        if self.len < ELF64_EHDR_LEN as u64 {
            // Its magic, from the file already open.
            let magic = self.bytes(0, ELF_MAGIC.len(), "ELF magic");
            return if magic.is_ok_and(|m| m == ELF_MAGIC) {
                Err(self.bad("truncated ELF header"))
            } else {
                Err(ElfError::NotElf(self.path.to_path_buf()))
            };
        }
        let eh = self.bytes(0, ELF64_EHDR_LEN, "ELF header")?;
        if &eh[..4] != ELF_MAGIC {
            return Err(ElfError::NotElf(self.path.to_path_buf()));
        }
        if eh[EI_CLASS] != ELFCLASS64 || eh[EI_DATA] != ELFDATA2LSB {
            return Err(
                self.bad("not a 64-bit little-endian ELF file (only x86_64 guests are supported)")
            );
        }
        Ok(eh)
    }

    /// The program headers the ELF header `eh` points at (none if it has none).
    fn program_headers(&self, eh: &[u8]) -> Result<Vec<ProgramHeader>, ElfError> {
        let phoff = u64_at(eh, E_PHOFF);
        let phentsize = u16_at(eh, E_PHENTSIZE) as usize;
        let phnum = u16_at(eh, E_PHNUM) as usize;
        if phnum == 0 {
            return Ok(Vec::new());
        }
        if phentsize != ELF64_PHDR_LEN || phnum > MAX_PHNUM {
            return Err(self.bad(format!(
                "unexpected program headers ({phnum} of {phentsize} bytes)"
            )));
        }
        let raw = self.bytes(phoff, phnum * ELF64_PHDR_LEN, "program headers")?;
        Ok(raw
            .chunks_exact(ELF64_PHDR_LEN)
            .map(ProgramHeader::parse)
            .collect())
    }

    /// The library entries and string table location of the `PT_DYNAMIC`
    /// segment `dynamic` (read up to its `DT_NULL`).
    fn dynamic_section(&self, dynamic: &ProgramHeader) -> Result<Dynamic, ElfError> {
        if dynamic.p_filesz > MAX_DYNAMIC_BYTES {
            return Err(self.bad(format!(
                "dynamic section of {} bytes (at most {MAX_DYNAMIC_BYTES} read)",
                dynamic.p_filesz
            )));
        }
        let dynb = self.bytes(
            dynamic.p_offset,
            dynamic.p_filesz as usize,
            "dynamic section",
        )?;
        let mut out = Dynamic {
            entries: Vec::new(),
            strtab: None,
            strsz: None,
        };
        for d in dynb.chunks_exact(ELF64_DYN_LEN) {
            let (tag, val) = (u64_at(d, 0), u64_at(d, 8));
            match tag {
                DT_NULL => break,
                DT_STRTAB => out.strtab = Some(val),
                DT_STRSZ => out.strsz = Some(val),
                DT_NEEDED | DT_RPATH | DT_RUNPATH => out.entries.push((tag, val)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The file offset and size of the dynamic string table.
    fn string_table(
        &self,
        phdrs: &[ProgramHeader],
        dynamic: &Dynamic,
    ) -> Result<(u64, u64), ElfError> {
        let (Some(strtab), Some(strsz)) = (dynamic.strtab, dynamic.strsz) else {
            return Err(self.bad("dynamic section names libraries but has no DT_STRTAB/DT_STRSZ"));
        };
        // DT_STRTAB is an address: find the file offset through the PT_LOAD that maps it.
        let str_off = phdrs
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .find(|p| strtab >= p.p_vaddr && strtab < p.p_vaddr.saturating_add(p.p_filesz))
            .map(|p| p.p_offset + (strtab - p.p_vaddr))
            .ok_or_else(|| {
                self.bad(format!(
                    "DT_STRTAB address {strtab:#x} is in no loaded segment"
                ))
            })?;
        Ok((str_off, strsz))
    }

    /// Reads each entry's string from the string table at `str_off` into
    /// `info`: needed libraries (with their offsets), RUNPATH and RPATH.
    fn add_dynamic_strings(
        &self,
        info: &mut ElfInfo,
        entries: Vec<(u64, u64)>,
        str_off: u64,
        strsz: u64,
    ) -> Result<(), ElfError> {
        let str_end = str_off.saturating_add(strsz);
        for (tag, val) in entries {
            if val >= strsz {
                return Err(self.bad(format!("dynamic string offset {val} past DT_STRSZ {strsz}")));
            }
            let at = str_off + val;
            let s = self.string(at, str_end, "dynamic string")?;
            let split = |s: &str| -> Vec<String> {
                s.split(':')
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect()
            };
            match tag {
                DT_NEEDED => {
                    info.needed.push(s);
                    info.needed_at.push(at);
                }
                DT_RUNPATH => info.runpath.extend(split(&s)),
                _ => info.rpath.extend(split(&s)),
            }
        }
        Ok(())
    }
}

/// Where in the file `path` the `DT_NEEDED` string `name` is stored (for
/// tests that patch a copy of a real binary).
pub fn needed_string_offset(path: &Path, name: &str) -> Result<Option<u64>, ElfError> {
    let info = read(path)?;
    Ok(info
        .needed
        .iter()
        .position(|n| n == name)
        .map(|i| info.needed_at[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ukload-elf-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn bin_true_names_its_loader_and_libc() {
        let info = read(Path::new("/bin/true")).unwrap();
        assert_eq!(
            info.interp.as_deref(),
            Some(Path::new("/lib64/ld-linux-x86-64.so.2"))
        );
        assert!(info.needed.contains(&"libc.so.6".to_string()), "{info:?}");
        assert_eq!(info.machine, 62);
    }

    #[test]
    fn a_shared_library_has_needed_but_no_loader() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libm.so.6");
        let info = read(libc).unwrap();
        assert_eq!(info.interp, None);
        assert_eq!(info.elf_type, ET_DYN);
        assert!(info.needed.contains(&"libc.so.6".to_string()), "{info:?}");
    }

    #[test]
    fn text_is_not_elf_and_truncated_elf_is_an_error_naming_the_file() {
        let t = tmp("text", b"#!/bin/sh\necho hi\n");
        assert!(matches!(read(&t), Err(ElfError::NotElf(_))));
        let whole = std::fs::read("/bin/true").unwrap();
        let cut = tmp("cut", &whole[..200]);
        let err = read(&cut).unwrap_err();
        assert!(matches!(err, ElfError::Bad(..)), "{err}");
        assert!(
            err.to_string().contains(&cut.display().to_string()),
            "{err}"
        );
        let tiny = tmp("tiny", &whole[..10]);
        assert!(matches!(read(&tiny), Err(ElfError::Bad(..))));
        for p in [t, cut, tiny] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn a_32_bit_elf_is_refused() {
        let mut whole = std::fs::read("/bin/true").unwrap();
        whole[EI_CLASS] = 1;
        let p = tmp("elf32", &whole);
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("64-bit"), "{err}");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn huge_program_header_count_is_refused_without_allocating() {
        let mut whole = std::fs::read("/bin/true").unwrap();
        whole[E_PHNUM..E_PHNUM + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        let p = tmp("phnum", &whole);
        assert!(matches!(read(&p), Err(ElfError::Bad(..))));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn written_headers_read_back_as_written() {
        let like = std::fs::read("/bin/true").unwrap();
        let mut phdrs = program_header_table(&like).unwrap();
        assert!(phdrs.iter().any(|p| p.p_type == PT_LOAD), "{phdrs:?}");
        phdrs[0].p_flags ^= 1;
        phdrs[0].p_memsz += 7;
        let out = write_headers(&like, &phdrs).unwrap();
        assert_eq!(out.len() as u64, headers_end(phdrs.len()));
        // The header table follows the file header; the rest of the file header is kept.
        assert_eq!(u64_at(&out, E_PHOFF), ELF64_EHDR_LEN as u64);
        assert_eq!(&out[..E_PHOFF], &like[..E_PHOFF]);
        // No section headers.
        assert_eq!(u64_at(&out, E_SHOFF), 0);
        assert!(out[E_SHENTSIZE..ELF64_EHDR_LEN].iter().all(|&b| b == 0));
        // Segment data past the end is refused; padded with the data, the table reads back.
        let last = phdrs.iter().map(|p| p.p_offset + p.p_filesz).max().unwrap();
        assert!(program_header_table(&out)
            .unwrap_err()
            .contains("outside the file"));
        let mut whole = out.clone();
        whole.resize(whole.len().max(last as usize), 0);
        assert_eq!(program_header_table(&whole).unwrap(), phdrs);
    }

    #[test]
    fn a_header_table_outside_the_file_or_of_odd_entries_is_refused() {
        let like = std::fs::read("/bin/true").unwrap();
        let mut odd = like.clone();
        odd[E_PHENTSIZE] = 32;
        assert!(program_header_table(&odd).unwrap_err().contains("size 32"));
        let mut far = like.clone();
        far[E_PHOFF..E_PHOFF + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(program_header_table(&far)
            .unwrap_err()
            .contains("header table lies outside"));
        assert!(program_header_table(b"\x7fELF").is_err());
        assert!(write_headers(b"#!/bin/sh", &[]).is_err());
    }

    #[test]
    fn the_needed_string_can_be_found_for_patching() {
        let off = needed_string_offset(Path::new("/bin/true"), "libc.so.6")
            .unwrap()
            .unwrap();
        let data = std::fs::read("/bin/true").unwrap();
        assert_eq!(&data[off as usize..off as usize + 10], b"libc.so.6\0");
    }
}
