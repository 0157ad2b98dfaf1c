//! Bounds-checked access to guest linear memory. Every pointer a guest passes goes through here, so
//! a bad pointer becomes `INVALID_MEMORY_ACCESS` and never a host panic.

use sluice_abi::Status;

pub(crate) struct GuestMemory<'a> {
    bytes: &'a mut [u8],
}

impl<'a> GuestMemory<'a> {
    pub(crate) fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes }
    }

    fn range(&self, ptr: u32, len: u32) -> Result<std::ops::Range<usize>, Status> {
        let start = ptr as usize;
        let end = start
            .checked_add(len as usize)
            .ok_or(Status::InvalidMemoryAccess)?;
        if end > self.bytes.len() {
            return Err(Status::InvalidMemoryAccess);
        }
        Ok(start..end)
    }

    pub(crate) fn read(&self, ptr: u32, len: u32) -> Result<&[u8], Status> {
        let range = self.range(ptr, len)?;
        Ok(&self.bytes[range])
    }

    pub(crate) fn read_u32(&self, ptr: u32) -> Result<u32, Status> {
        let bytes = self.read(ptr, 4)?;
        Ok(u32::from_le_bytes(
            bytes.try_into().map_err(|_| Status::InvalidMemoryAccess)?,
        ))
    }

    pub(crate) fn write(&mut self, ptr: u32, data: &[u8]) -> Result<(), Status> {
        let range = self.range(ptr, data.len() as u32)?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    pub(crate) fn write_u32(&mut self, ptr: u32, value: u32) -> Result<(), Status> {
        self.write(ptr, &value.to_le_bytes())
    }

    pub(crate) fn write_u64(&mut self, ptr: u32, value: u64) -> Result<(), Status> {
        self.write(ptr, &value.to_le_bytes())
    }

    /// Fails unless `[ptr, ptr + len)` is inside memory: used to check return slots before the
    /// host allocates guest memory for a result, so a bad slot does not leak an allocation.
    pub(crate) fn check(&self, ptr: u32, len: u32) -> Result<(), Status> {
        self.range(ptr, len).map(|_| ())
    }
}
