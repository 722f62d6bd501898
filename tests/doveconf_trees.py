"""Config trees for the config and pydoveconf tests: a copy of Debian's
installed /etc/dovecot, and a realistic Dovecot 2.3 tree using the grammar
(unnamed listeners, ``$key`` expansion, ``!include_try``, ``<file`` in a
section, protocol and remote filters, quoted values)."""

from __future__ import annotations

import os
import shutil

DEBIAN_ETC = "/etc/dovecot"
DEBIAN_PROTOCOLS = "/usr/share/dovecot/protocols.d"

RICH_TREE: dict[str, str] = {
    "dovecot.conf": """\
# A Dovecot 2.3 tree using the grammar pydovecot must read.
protocols = $protocols imap
!include_try /nonexistent/protocols.d/*.protocol
!include conf.d/*.conf
!include_try local.conf
""",
    "conf.d/args.txt": "my args\n",
    "local.conf": "hostname = mail.example.com\n",
    "conf.d/10-main.conf": """\
protocols = $protocols pop3 lmtp
listen = 127.0.0.1, ::1
auth_mechanisms = $auth_mechanisms login
login_greeting = "Mail server ready # here"
mail_location = maildir:~/Maildir:LAYOUT=maildir++
mail_plugins = $mail_plugins notify
first_valid_uid = 1000
recipient_delimiter = -
imap_idle_notify_interval = 1 mins
auth_cache_size = 10 M
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%n /etc/dovecot/users
}
passdb named {
  driver = static
  args = <args.txt
  skip = authenticated
}
userdb {
  driver = passwd-file
  args = /etc/dovecot/users
  default_fields = uid=vmail gid=vmail home=/srv/mail/%u
}
namespace inbox {
  inbox = yes
  separator = /
  mailbox "Sent Messages" {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
  }
}
service imap-login {
  inet_listener imap {
    port = 10143
  }
  inet_listener {
    address = 127.0.0.2
    port = 10144
  }
  process_min_avail = 1
  client_limit = 100
}
service director {
  inet_listener {
  }
}
service lmtp {
  unix_listener /var/spool/postfix/private/dovecot-lmtp {
    mode = 0600
    user = postfix
    group = postfix
  }
}
service auth {
  unix_listener auth-userdb {
    mode = 0660
  }
}
protocol imap {
  mail_plugins = $mail_plugins imap_zlib
  imap_idle_notify_interval = 3 mins
  plugin {
    sieve = file:~/sieve
  }
}
protocol lmtp {
  mail_plugins = $mail_plugins sieve
  postmaster_address = postmaster@example.com
}
protocol !pop3 {
  login_greeting = not pop3
}
remote 10.0.0.0/8 {
  mail_debug = yes
}
plugin {
  sieve = file:~/sieve;active=~/.dovecot.sieve
  sieve_dir = ~/sieve
}
dict {
  acl = pgsql:/etc/dovecot/dovecot-dict-sql.conf.ext
}
""",
}


def write_tree(root: str, files: dict[str, str]) -> str:
    """Write ``files`` under ``root``; the path of its dovecot.conf."""
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return os.path.join(root, "dovecot.conf")


def copy_debian_tree(root: str) -> str:
    """Copy Debian's installed /etc/dovecot (and the installed packages'
    protocols.d) under ``root``, changing only the protocols.d path; the
    path of the copy's dovecot.conf."""
    etc = os.path.join(root, "dovecot")
    shutil.copytree(DEBIAN_ETC, etc, ignore=shutil.ignore_patterns("private"))
    os.makedirs(os.path.join(etc, "private"))
    shutil.copytree(DEBIAN_PROTOCOLS, os.path.join(root, "protocols.d"))
    main = os.path.join(etc, "dovecot.conf")
    with open(main) as f:
        text = f.read()
    text = text.replace(DEBIAN_PROTOCOLS, os.path.join(root, "protocols.d"))
    with open(main, "w") as f:
        f.write(text)
    return main


def debian_installed() -> bool:
    return os.path.exists(os.path.join(DEBIAN_ETC, "dovecot.conf")) and bool(
        shutil.which("doveconf"))
