//! Network faults on a node's link to the redirector: partitions and impairments.
//!
//! tc netem is not available, so loss is an nftables rule with `numgen random`, and
//! duplication is iptables' TEE target sending a random share of packets a second time to
//! the link's other end. Everything is installed inside lab namespaces only, in tables and
//! chains of our own, so removing it never touches anything else.

use std::process::Command;

use anyhow::{bail, Result};

use super::net::{find_program, require_program, run, run_with_input};
use super::{LabState, Node};

/// The nftables table holding a partition, in the node's namespace.
const PART_TABLE: &str = "hydralab_part";
/// The nftables table holding packet loss, in the node's namespace.
const LOSS_TABLE: &str = "hydralab_imp";
/// The iptables mangle chain duplicating packets, in the node's namespace; in the
/// redirector's namespace it is suffixed with the redirector-side interface.
const DUP_CHAIN: &str = "HYDRALAB_DUP";

/// Resolves `node` to a leaf (client or host), refusing the redirector with `what` in the message.
fn leaf(lab: &LabState, node: &str, what: &str) -> Result<Node> {
    let node = lab.parse_node(node)?;
    if node == Node::Redir {
        bail!(
            "cannot {what} redir: it is the other end of every link; {what} client or {} instead",
            lab.host_list()
        );
    }
    Ok(node)
}

/// Runs an nftables script inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<()> {
    run_with_input(
        Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
        Some(script),
    )?;
    Ok(())
}

/// Deletes table `inet NAME` in `ns` if it exists (declaring it first makes the delete safe).
fn nft_remove_table(ns: &str, table: &str) -> Result<()> {
    nft(
        ns,
        &format!("table inet {table} {{}}\ndelete table inet {table}\n"),
    )
}

/// Replaces table `inet NAME` in `ns` with one whose input and output chains hold `in_rule`
/// and `out_rule`, atomically.
fn nft_replace_table(ns: &str, table: &str, in_rule: &str, out_rule: &str) -> Result<()> {
    nft(
        ns,
        &format!(
            "table inet {table} {{}}\n\
             delete table inet {table}\n\
             table inet {table} {{\n\
             \tchain input {{ type filter hook input priority -200; policy accept; {in_rule}; }}\n\
             \tchain output {{ type filter hook output priority -200; policy accept; {out_rule}; }}\n\
             }}\n"
        ),
    )
}

/// `lab partition` (`cut`) and `lab heal` (`!cut`).
pub(super) fn partition(lab: &LabState, node: &str, cut: bool) -> Result<()> {
    let node = leaf(lab, node, if cut { "partition" } else { "heal" })?;
    require_program("nft")?;
    let ns = lab.ns(&node);
    if cut {
        nft_replace_table(
            &ns,
            PART_TABLE,
            "iifname \"eth0\" drop",
            "oifname \"eth0\" drop",
        )?;
        eprintln!("partitioned {node} ({ns}) from the redirector");
    } else {
        nft_remove_table(&ns, PART_TABLE)?;
        eprintln!("healed {node} ({ns})");
    }
    Ok(())
}

fn check_pct(flag: &str, pct: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&pct) {
        bail!("{flag} {pct} is out of range: give a percentage from 0 to 100");
    }
    Ok(())
}

/// `lab impair`: replaces the node's impairment with `loss`% loss and `dup`% duplication,
/// each way; both 0 removes it.
pub(super) fn impair(lab: &LabState, node: &str, loss: f64, dup: f64) -> Result<()> {
    check_pct("--loss", loss)?;
    check_pct("--dup", dup)?;
    let node = leaf(lab, node, "impair")?;
    require_program("nft")?;
    if dup > 0.0 {
        require_program("iptables")?;
    }
    let ns = lab.ns(&node);
    let redir = lab.ns(&Node::Redir);
    // INVARIANT: `leaf` returned a node with a link.
    let iface = node.redir_iface().expect("leaf has a link");
    let addr = node.addr().expect("leaf has a link");
    let peer = node.peer_addr().expect("leaf has a link");

    if loss > 0.0 {
        // Per ten thousand, so fractional percentages work.
        let threshold = (loss * 100.0).round() as u32;
        let rule = |dir: &str| {
            format!("{dir}name \"eth0\" numgen random mod 10000 < {threshold} counter drop")
        };
        nft_replace_table(&ns, LOSS_TABLE, &rule("iif"), &rule("oif"))?;
    } else {
        nft_remove_table(&ns, LOSS_TABLE)?;
    }

    let redir_chain = format!("{DUP_CHAIN}_{}", iface.to_ascii_uppercase());
    let probability = (dup > 0.0).then_some(dup / 100.0);
    if probability.is_some() || find_program("iptables").is_some() {
        // Toward the redirector from the node, and toward the node from the redirector.
        set_dup(&ns, DUP_CHAIN, "eth0", &peer, probability)?;
        set_dup(&redir, &redir_chain, &iface, &addr, probability)?;
    }

    if loss == 0.0 && dup == 0.0 {
        eprintln!("removed impairments of {node} ({ns})");
    } else {
        eprintln!("impaired {node} ({ns}): {loss}% loss, {dup}% duplication, each way");
    }
    Ok(())
}

/// Makes `chain` in namespace `ns` duplicate packets leaving by `oif` with `probability`
/// (sending the copy to `gateway`, the link's other end), or removes it for `None`.
fn set_dup(
    ns: &str,
    chain: &str,
    oif: &str,
    gateway: &str,
    probability: Option<f64>,
) -> Result<()> {
    let iptables = |args: &[&str]| {
        run(Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-w", "-t", "mangle"])
            .args(args))
    };
    // Remove any previous setting; these fail harmlessly when there is none.
    while iptables(&["-D", "POSTROUTING", "-o", oif, "-j", chain]).is_ok() {}
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);

    if let Some(p) = probability {
        let p = format!("{p:.6}");
        iptables(&["-N", chain])?;
        iptables(&[
            "-A",
            chain,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "TEE",
            "--gateway",
            gateway,
        ])?;
        iptables(&["-A", "POSTROUTING", "-o", oif, "-j", chain])?;
    }
    Ok(())
}
