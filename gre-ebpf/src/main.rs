//! The GRE datapath: XDP decapsulation on the underlay, TC encapsulation on the tunnel netdev.
//! Each program is a thin wrapper around a `try_` function; drop reasons are counted in `DROPS`.
#![no_std]
#![no_main]
// Inline assembly for the atomic fetch-and-add of sequence numbers (encap.rs).
#![feature(asm_experimental_arch)]

mod bench;
mod csum;
mod decap;
mod encap;
mod fib;
mod headers;
mod ip;
mod lan;
mod limit;
mod maps;
mod packet;
mod peers;
mod replicate;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// XDP on the underlay interface: decapsulates GRE of our tunnels; passes everything else.
#[xdp]
pub fn gre_decap(ctx: XdpContext) -> u32 {
    match decap::try_decap(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// TC egress on the tunnel netdev: encapsulates what the kernel sends into the tunnel.
#[classifier]
pub fn gre_encap(ctx: TcContext) -> i32 {
    match encap::try_encap(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

/// TC, tail-called by `gre_encap` for multicast on a multipoint tunnel: one replica per call.
#[classifier]
pub fn gre_replicate(ctx: TcContext) -> i32 {
    replicate::step(&ctx)
}

/// XDP on LAN ports: encapsulates routed overlay traffic straight to the underlay when all is
/// known; passes everything else to the kernel.
#[xdp]
pub fn gre_lan(ctx: XdpContext) -> u32 {
    match lan::try_lan(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// XDP on the kernel-facing end of the tunnel netdev. A veth accepts redirected frames only when
/// its peer runs NAPI, which an attached XDP program provides; this one lets everything through.
#[xdp]
pub fn gre_napi_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// An empty TC program: never attached; the floor `cargo xtask bench` measures the TC programs
/// against (as `gre_napi_pass` is for XDP).
#[classifier]
pub fn gre_tc_pass(_ctx: TcContext) -> i32 {
    aya_ebpf::bindings::TC_ACT_OK
}

/// TC, tests only (never attached by `gre`): tags each frame with VLAN 100 beside it, as a VLAN
/// device or a VLAN-aware bridge hands frames to a gretap, where the kernel has neither.
#[classifier]
pub fn gre_test_vlan_tag(ctx: TcContext) -> i32 {
    // SAFETY: the helper acts on this program's skb.
    unsafe { aya_ebpf::helpers::bpf_skb_vlan_push(ctx.skb.skb, gre_common::gre::ETH_P_8021Q.to_be(), 100) };
    // TCX_NEXT: on to the encapsulation behind it.
    aya_ebpf::bindings::TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
