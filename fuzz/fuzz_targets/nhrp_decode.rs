//! Any bytes: decoding returns, never panics; what decodes re-encodes to the same bytes (the
//! codec is lossless), and decodes again to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhrp_wire::Packet;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::decode(data) else { return };
    let size = usize::from(u16::from_be_bytes([data[10], data[11]]));
    let again = p.encode(false).expect("a decoded packet encodes");
    assert_eq!(again, data[..size], "re-encoding changed the bytes");
    assert_eq!(Packet::decode(&again).as_ref(), Ok(&p));
    // The views used by `gre nhrp dump` and the engine must not panic either.
    let _ = nhrp_wire::PacketView::from(&p);
    let _ = p.extension_offsets();
    let _ = p.unrecognized_compulsory();
});
