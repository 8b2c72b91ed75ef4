"""Validators of names, addresses and paths that may reach a remote command."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from kvmfleet.domain import validation as v
from kvmfleet.errors import InvalidSpecError

Validator = Callable[[object, str], object]

# A syntactically valid ed25519 public key blob (type string + 32 key bytes).
_ED25519_BLOB = (
    len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(32)
)
ED25519 = "ssh-ed25519 " + base64.b64encode(_ED25519_BLOB).decode()


@pytest.mark.parametrize(
    ("validator", "value", "expected"),
    [
        (v.validate_dns1123_label, "default", "default"),
        (v.validate_dns1123_label, "a", "a"),
        (v.validate_dns1123_label, "team-1", "team-1"),
        (v.validate_dns1123_label, "0abc", "0abc"),
        (v.validate_dns1123_label, "a" * 63, "a" * 63),
        (v.validate_dns1123_subdomain, "kvm1", "kvm1"),
        (v.validate_dns1123_subdomain, "kvmhost1.lab.example", "kvmhost1.lab.example"),
        (v.validate_dns1123_subdomain, "a-b.c-d", "a-b.c-d"),
        (v.validate_interface_name, "br0", "br0"),
        (v.validate_interface_name, "eth0.100", "eth0.100"),
        (v.validate_interface_name, "enp0s31f6", "enp0s31f6"),
        (v.validate_interface_name, "br_mgmt-1", "br_mgmt-1"),
        (v.validate_interface_name, "a" * 15, "a" * 15),
        (v.validate_interface_name, "_x", "_x"),
        (v.validate_host_address, "kvmhost1", "kvmhost1"),
        (v.validate_host_address, "KVMHost1.Lab.Example", "kvmhost1.lab.example"),
        (v.validate_host_address, "host.example.", "host.example."),
        (v.validate_host_address, "10.77.0.11", "10.77.0.11"),
        (v.validate_host_address, "fd00::1", "fd00::1"),
        (v.validate_host_address, "[fd00::1]", "fd00::1"),
        (v.validate_host_address, "FD00:0:0::0001", "fd00::1"),
        (v.validate_host_address, "::ffff:10.0.0.1", "::ffff:a00:1"),
        (v.validate_host_address, "1host", "1host"),
        (v.validate_absolute_path, "/", "/"),
        (v.validate_absolute_path, "/srv/vms", "/srv/vms"),
        (v.validate_absolute_path, "/srv/vms/", "/srv/vms"),
        (v.validate_absolute_path, "//srv//vms/./x", "/srv/vms/x"),
        (v.validate_absolute_path, "/var/lib/kvmfleet/pools", "/var/lib/kvmfleet/pools"),
        (v.validate_absolute_path, "/a/b:c,d=e+f~g@h%i#j", "/a/b:c,d=e+f~g@h%i#j"),
        (v.validate_absolute_path, "/a/..b/c..", "/a/..b/c.."),
        (v.validate_domain_name, "kvm1", "kvm1"),
        (v.validate_domain_name, "Node_1.lab+x-y", "Node_1.lab+x-y"),
        (v.validate_domain_name, "_kvm", "_kvm"),
        (v.validate_user_name, "root", "root"),
        (v.validate_user_name, "_svc-kvm1", "_svc-kvm1"),
        (v.validate_secret_key, "ssh-privatekey", "ssh-privatekey"),
        (v.validate_secret_key, "id_ed25519.key", "id_ed25519.key"),
        (v.validate_port, 22, 22),
        (v.validate_port, 65535, 65535),
        (
            v.validate_uuid,
            "6F1C9C1E-4F4E-4A43-9A43-0C3F7C5E7D11",
            "6f1c9c1e-4f4e-4a43-9a43-0c3f7c5e7d11",
        ),
        (v.validate_host_public_key, ED25519, ED25519),
        (v.validate_host_public_key, ED25519 + " root@kvmhost1", ED25519),
        (v.validate_host_public_key, "  " + ED25519 + "  ", ED25519),
        (v.validate_free_text, "rhels6.5", "rhels6.5"),
        (v.validate_free_text, "compute node (x86)", "compute node (x86)"),
    ],
)
def test_accepts_and_canonicalizes(validator: Validator, value: object, expected: object) -> None:
    assert validator(value, "spec.x") == expected


SHELL_ATTACKS = [
    "x;reboot",
    "x&&id",
    "x|id",
    "$(id)",
    "`id`",
    "x>y",
    "x<y",
    "x'y",
    'x"y',
    "x\\y",
    "x y",
    "x\ty",
    "x\ny",
    "x\x00y",
    "x*",
    "x?",
    "x!",
    "{a,b}",
    "[ab]",
]


@pytest.mark.parametrize(
    ("validator", "value", "fragment"),
    [
        (v.validate_dns1123_label, "", "must not be empty"),
        (v.validate_dns1123_label, 7, "must be a string, not int"),
        (v.validate_dns1123_label, None, "must be a string"),
        (v.validate_dns1123_label, "Default", "not a DNS-1123 label"),
        (v.validate_dns1123_label, "-a", "not a DNS-1123 label"),
        (v.validate_dns1123_label, "a-", "not a DNS-1123 label"),
        (v.validate_dns1123_label, "a.b", "not a DNS-1123 label"),
        (v.validate_dns1123_label, "a" * 64, "at most 63"),
        (v.validate_dns1123_subdomain, "a..b", "not a DNS-1123 subdomain"),
        (v.validate_dns1123_subdomain, ".a", "not a DNS-1123 subdomain"),
        (v.validate_dns1123_subdomain, "a_b", "not a DNS-1123 subdomain"),
        (v.validate_dns1123_subdomain, "a" * 254, "at most 253"),
        (v.validate_interface_name, "a" * 16, "at most 15"),
        (v.validate_interface_name, ".", "not a valid interface name"),
        (v.validate_interface_name, "..", "not a valid interface name"),
        (v.validate_interface_name, "br/0", "not a valid interface name"),
        (v.validate_interface_name, "br 0", "not a valid interface name"),
        (v.validate_interface_name, "br:0", "not a valid interface name"),
        (v.validate_interface_name, "-br0", "not a valid interface name"),
        (v.validate_interface_name, "br0;reboot", "not a valid interface name"),
        (v.validate_host_address, "-oProxyCommand=id", "not a valid host name"),
        (v.validate_host_address, "host name", "not a valid host name"),
        (v.validate_host_address, "host\n", "not a valid host name"),
        (v.validate_host_address, "host;id", "not a valid host name"),
        (v.validate_host_address, "host_1", "not a valid host name"),
        (v.validate_host_address, "a..b", "not a valid host name"),
        (v.validate_host_address, "999.1.1.1", "not a valid IPv4"),
        (v.validate_host_address, "10.0.0.256", "not a valid IPv4"),
        (v.validate_host_address, "010.0.0.1", "not a valid IPv4"),
        (v.validate_host_address, "fd00::1::2", "not a valid IPv6"),
        (v.validate_host_address, "[fd00::1", "not a valid IPv6"),
        (v.validate_host_address, "fe80::1%eth0", "zone indexes"),
        (v.validate_host_address, "a" * 64 + ".example", "not a valid host name"),
        (v.validate_host_address, "user@host", "not a valid host name"),
        (v.validate_absolute_path, "srv/vms", "must be an absolute path"),
        (v.validate_absolute_path, "~/vms", "must be an absolute path"),
        (v.validate_absolute_path, "/srv/../etc", "'..' segments"),
        (v.validate_absolute_path, "/srv/..", "'..' segments"),
        (v.validate_absolute_path, "/srv/vms;rm -rf /", "metacharacter ';'"),
        (v.validate_absolute_path, "/srv/vms;rm", "metacharacter ';'"),
        (v.validate_absolute_path, "/srv/$(id)", "metacharacter '$'"),
        (v.validate_absolute_path, "/srv/`id`", "metacharacter '`'"),
        (v.validate_absolute_path, "/srv/a|b", "metacharacter '|'"),
        (v.validate_absolute_path, "/srv/a&b", "metacharacter '&'"),
        (v.validate_absolute_path, "/srv/a*", "metacharacter '*'"),
        (v.validate_absolute_path, "/srv/a'b", "metacharacter"),
        (v.validate_absolute_path, "/srv/a\nb", "whitespace or control"),
        (v.validate_absolute_path, "/srv/a\x00b", "whitespace or control"),
        (v.validate_absolute_path, "/srv/a\tb", "whitespace or control"),
        (v.validate_absolute_path, "/srv/a\u00a0b", "whitespace or control"),
        (v.validate_absolute_path, "/" + "a" * 256, "at most 255"),
        (v.validate_absolute_path, "/" + "a/" * 2049, "at most 4096"),
        (v.validate_domain_name, "-kvm1", "not a valid domain name"),
        (v.validate_domain_name, ".kvm1", "not a valid domain name"),
        (v.validate_domain_name, "kvm/1", "not a valid domain name"),
        (v.validate_domain_name, "kvm 1", "not a valid domain name"),
        (v.validate_domain_name, "k" * 254, "at most 253"),
        (v.validate_user_name, "Root", "not a valid user name"),
        (v.validate_user_name, "-oX", "not a valid user name"),
        (v.validate_user_name, "root;id", "not a valid user name"),
        (v.validate_user_name, "u" * 33, "not a valid user name"),
        (v.validate_secret_key, "a/b", "not a valid Secret key"),
        (v.validate_port, 0, "between 1 and 65535"),
        (v.validate_port, 65536, "between 1 and 65535"),
        (v.validate_port, "22", "must be an integer"),
        (v.validate_port, True, "must be an integer"),
        (v.validate_uuid, "not-a-uuid", "not a valid UUID"),
        (v.validate_host_public_key, "ssh-ed25519", "'<key type> <base64 key>'"),
        (v.validate_host_public_key, "ssh-ed25519 !!!!", "not valid base64"),
        (v.validate_host_public_key, "ssh-rsa " + ED25519.split()[1], "does not match"),
        (v.validate_host_public_key, "ssh-ed25519 AAAA", "too short"),
        (v.validate_host_public_key, "Bad;Type AAAA", "not an SSH key type"),
        (v.validate_host_public_key, ED25519 + "\nssh-rsa AAAA", "single line"),
        (v.validate_free_text, "line\nbreak", "control characters"),
        (v.validate_free_text, "x" * 254, "at most 253"),
    ],
)
def test_rejects_with_clear_message(validator: Validator, value: object, fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        validator(value, "spec.x")
    assert caught.value.message.startswith("spec.x: ")
    assert fragment in caught.value.message
    assert caught.value.reason == "InvalidSpec"


@pytest.mark.parametrize("attack", SHELL_ATTACKS)
@pytest.mark.parametrize(
    "validator",
    [
        v.validate_dns1123_label,
        v.validate_dns1123_subdomain,
        v.validate_interface_name,
        v.validate_host_address,
        v.validate_domain_name,
        v.validate_user_name,
        v.validate_secret_key,
    ],
)
def test_names_refuse_shell_metacharacters(validator: Validator, attack: str) -> None:
    with pytest.raises(InvalidSpecError):
        validator(attack, "spec.x")


@pytest.mark.parametrize("attack", SHELL_ATTACKS)
def test_paths_refuse_shell_metacharacters(attack: str) -> None:
    with pytest.raises(InvalidSpecError):
        v.validate_absolute_path("/srv/" + attack, "spec.x")


@pytest.mark.parametrize(
    ("address", "uri_host"),
    [("kvmhost1", "kvmhost1"), ("10.0.0.1", "10.0.0.1"), ("fd00::1", "[fd00::1]")],
)
def test_host_for_uri(address: str, uri_host: str) -> None:
    assert v.host_for_uri(address) == uri_host


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidSpecError) as caught:
        v.validate_dns1123_subdomain("X" * 200, "metadata.name")
    assert len(caught.value.message) < 300
    assert "..." in caught.value.message
