//! TEMPORARY contract stub (procmem helper replaces this file).
use std::path::Path;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidRange { pub start: u32, pub end: u32 }
impl CidRange { pub fn contains(&self, c: u32) -> bool { c >= self.start && c <= self.end } pub fn len(&self) -> u64 { (self.end - self.start) as u64 + 1 } }
impl std::fmt::Display for CidRange { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{}-{}", self.start, self.end) } }
impl std::str::FromStr for CidRange { type Err = String; fn from_str(_s: &str) -> Result<Self, String> { todo!() } }
#[derive(Clone, Debug)]
pub struct HolderInfo { pub pid: u32, pub run_id: String, pub instance: Option<u32> }
#[derive(Debug)]
pub struct CidError;
impl std::fmt::Display for CidError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "x") } }
pub struct CidRegistry;
pub struct CidLease { pub cid: u32 }
impl CidLease { pub fn set_instance(&mut self, _i: u32) -> std::io::Result<()> { todo!() } }
impl CidRegistry { pub fn open(_d: &Path) -> Result<Self, CidError> { todo!() } pub fn allocate(&self, _r: CidRange, _n: usize, _h: &HolderInfo) -> Result<Vec<CidLease>, CidError> { todo!() } }
