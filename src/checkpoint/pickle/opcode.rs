//! The pickle opcodes the checkpoint reader understands (protocols 0–4, as `torch.save` emits them
//! and the tagfix writer uses them). Any other byte is refused with its value.

/// Defines [`Op`] and the list of all its values from one table.
macro_rules! opcodes {
    ($($name:ident = $byte:expr,)*) => {
        /// One opcode; the discriminant is its byte in the stream (names as in Python's `pickletools`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Op {
            $($name = $byte,)*
        }

        impl Op {
            /// Every opcode, for the byte lookup.
            const ALL: &'static [Op] = &[$(Op::$name,)*];
        }
    };
}

opcodes! {
    Proto = 0x80,
    Frame = 0x95,
    Stop = b'.',
    Mark = b'(',
    None = b'N',
    NewTrue = 0x88,
    NewFalse = 0x89,
    BinInt1 = b'K',
    BinInt2 = b'M',
    BinInt = b'J',
    Long1 = 0x8a,
    Long4 = 0x8b,
    BinFloat = b'G',
    BinUnicode = b'X',
    ShortBinUnicode = 0x8c,
    BinUnicode8 = 0x8d,
    ShortBinString = b'U',
    BinString = b'T',
    ShortBinBytes = b'C',
    BinBytes = b'B',
    EmptyTuple = b')',
    EmptyList = b']',
    EmptyDict = b'}',
    Tuple = b't',
    List = b'l',
    Tuple1 = 0x85,
    Tuple2 = 0x86,
    Tuple3 = 0x87,
    BinPut = b'q',
    LongBinPut = b'r',
    Memoize = 0x94,
    BinGet = b'h',
    LongBinGet = b'j',
    Append = b'a',
    Appends = b'e',
    SetItem = b's',
    SetItems = b'u',
    Global = b'c',
    StackGlobal = 0x93,
    BinPersId = b'Q',
    Reduce = b'R',
    NewObj = 0x81,
    Build = b'b',
}

impl Op {
    /// Opcode by byte, built once at compile time.
    const BY_BYTE: [Option<Op>; 256] = {
        let mut table = [None; 256];
        let mut i = 0;
        while i < Op::ALL.len() {
            table[Op::ALL[i] as usize] = Some(Op::ALL[i]);
            i += 1;
        }
        table
    };

    /// The opcode of `byte`, or `None` for one the reader does not support.
    pub fn from_byte(byte: u8) -> Option<Op> {
        Op::BY_BYTE[byte as usize]
    }

    /// The byte that encodes this opcode.
    pub fn byte(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn bytes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for &op in Op::ALL {
            assert_eq!(Op::from_byte(op.byte()), Some(op));
            assert!(seen.insert(op.byte()), "{op:?} repeats a byte");
        }
        assert_eq!(Op::from_byte(0x00), None);
        assert_eq!(Op::from_byte(b'i'), None, "INST is not supported");
    }
}
