//! A minimal writer for the "newc" cpio format the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst). Timestamps and owners are
//! fixed, so the same inputs give the same archive.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;

pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    /// Bytes written so far, for the 4-byte alignment newc requires.
    offset: usize,
}

/// One entry's metadata.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer {
            out,
            next_ino: 1,
            offset: 0,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(&header(name, S_IFDIR | perm, 0, (0, 0)), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(&header(name, S_IFREG | perm, data.len(), (0, 0)), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        let h = header(name, S_IFLNK | 0o777, target.len(), (0, 0));
        self.entry(&h, target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(&header(name, S_IFCHR | perm, 0, (major, minor)), &[])
    }

    /// Writes the trailer and hands back the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        let h = Header {
            nlink: 1,
            ..header("TRAILER!!!", 0, 0, (0, 0))
        };
        self.next_ino = 0;
        self.entry(&h, &[])?;
        Ok(self.out)
    }

    fn entry(&mut self, h: &Header, data: &[u8]) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            h.mode,
            0, // uid
            0, // gid
            h.nlink,
            0, // mtime
            to_u32(h.size)?,
            0, // dev major
            0, // dev minor
            h.rdev.0,
            h.rdev.1,
            to_u32(h.name.len() + 1)?,
            0, // check (unused by newc)
        ];
        let mut head = String::from("070701");
        for f in fields {
            head.push_str(&format!("{f:08x}"));
        }
        self.write(head.as_bytes())?;
        self.write(h.name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len();
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - self.offset % 4) % 4;
        self.write(&[0; 3][..pad])
    }
}

fn header(name: &str, mode: u32, size: usize, rdev: (u32, u32)) -> Header<'_> {
    let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
    Header {
        name,
        mode,
        nlink,
        size,
        rdev,
    }
}

fn to_u32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("cpio entry larger than 4 GiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut w = Writer::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/x", 0o755, b"hello").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("hello"));
    }
}
