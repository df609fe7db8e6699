#!/usr/bin/env python3
"""trilb in front of two real WordPress servers, on one machine, from Debian packages.

    python3 examples/wordpress/stack.py up       # install what is missing, start everything
    python3 examples/wordpress/stack.py status   # what runs, where
    python3 examples/wordpress/stack.py down     # stop what `up` started, remove its folder

``up`` starts, each as a child process in its own process group and all on 127.0.0.1:

* MariaDB on a fresh data directory (``mariadb-install-db``, then ``mariadbd``), with a
  ``wordpress`` database and a ``wordpress`` user that has a generated password (root has no
  password and is reachable through the stack's own unix socket only);
* two Apache instances (``apache2 -f <generated conf> -DFOREGROUND``, prefork + mod_php) serving
  one copy of Debian's WordPress (``/usr/share/wordpress``) with a generated ``wp-config.php``
  that includes ``wp-config-proxy.php``; each adds ``X-Backend: wp1`` / ``wp2`` to its responses
  and, through mod_remoteip, logs the client address trilb puts in ``X-Forwarded-For``;
* a development CA and a certificate for ``blog.test`` (``trilb certs``);
* trilb, with ``trilb.toml`` from this folder (ports changed if you asked for other ones).

Everything it starts is written to ``STATE/state.json`` (pids, ports, logs); ``down`` stops
exactly those processes (after checking each pid still runs a command of this stack) and removes
STATE. ``stop wp1`` / ``start wp1`` stop and start one Apache, to watch trilb's health checks.

Run as root it installs missing Debian packages with apt-get and runs Apache as www-data and
MariaDB as mysql; as another user it needs the packages installed already and runs everything as
that user. It needs Python 3.11 and, for trilb, the interpreter that runs it must import trilb or
``trilb`` must be on PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_STATE = Path(os.environ.get("TMPDIR", "/tmp")) / "trilb-wordpress"
SITE_NAME = "blog.test"
SERVERS = ("wp1", "wp2")

#: Debian package -> a file (a glob pattern) that shows it is installed
PACKAGES = {
    "mariadb-server": "/usr/sbin/mariadbd",
    "mariadb-client": "/usr/bin/mariadb",
    "apache2": "/usr/sbin/apache2",
    "libapache2-mod-php": "/usr/lib/apache2/modules/libphp*.so",
    "php-mysql": "/etc/php/*/mods-available/mysqli.ini",
    "wordpress": "/usr/share/wordpress/wp-settings.php",
    "wordpress-theme-twentytwentythree": "/usr/share/wordpress/wp-content/themes/twentytwentythree",
    "curl": "/usr/bin/curl",
}
WORDPRESS_SOURCE = Path("/usr/share/wordpress")
APACHE_MODULES = Path("/usr/lib/apache2/modules")

#: how long one process may take to start listening
START_TIMEOUT = 60.0


class StackError(Exception):
    """Something the user can act on; printed without a traceback."""


def say(message: str) -> None:
    print(f"stack: {message}", flush=True)


# --- packages ---------------------------------------------------------------------------------


def missing_packages() -> list[str]:
    return [name for name, marker in PACKAGES.items() if not glob.glob(marker)]


def install_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise StackError(
            "these Debian packages are missing: "
            + " ".join(missing)
            + "\n  install them (sudo apt-get install --no-install-recommends "
            + " ".join(missing)
            + ") or run `up` as root"
        )
    say(f"installing {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Debian starts a service when its package is installed; the stack runs its own instances,
    # so keep the system's mariadb and apache2 from starting (the standard policy-rc.d hook),
    # unless the machine already has a policy of its own.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\n# written by trilb's examples/wordpress/stack.py\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
        )
    except subprocess.CalledProcessError as exc:
        raise StackError(f"apt-get failed ({exc})") from exc
    finally:
        if made_policy:
            policy.unlink()
    still = missing_packages()
    if still:
        raise StackError(f"still missing after apt-get: {' '.join(still)}")


# --- state ------------------------------------------------------------------------------------


class State:
    """STATE/state.json: what `up` started and where; written after every change."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.file = directory / "state.json"
        self.data: dict[str, Any] = {"pids": {}, "commands": {}}
        if self.file.exists():
            self.data = json.loads(self.file.read_text())

    def save(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.file)

    @property
    def pids(self) -> dict[str, int]:
        pids: dict[str, int] = self.data["pids"]
        return pids


def run_as_root() -> bool:
    return os.geteuid() == 0


def check_reachable(directory: Path, user: str) -> None:
    """As root the servers run as other users: every folder above STATE must let them through."""
    for parent in [directory, *directory.parents]:
        if not parent.stat().st_mode & 0o001:
            raise StackError(
                f"{parent} is not searchable by others, so {user} cannot reach {directory}; "
                "choose another --state-dir (the default is under /tmp)"
            )


def chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


# --- processes --------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (nobody may reap what `up` left behind)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def ours(pid: int, state: State) -> bool:
    """The pid still runs one of this stack's commands (not a later process that got the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return str(state.dir) in cmdline


def start_process(state: State, name: str, argv: Sequence[str], log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` stops its children too
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    state.pids[name] = proc.pid
    state.data["commands"][name] = {"argv": list(argv), "log": str(log)}
    state.save()
    return proc.pid


def listens(pid: int, port: int) -> bool:
    """Process ``pid`` itself holds a socket listening on 127.0.0.1:port (not someone else)."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    try:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
        if not inodes:
            return False
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def wait_listening(pid: int, port: int, what: str, *logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if not alive(pid):
            tails = "".join(
                f"\nthe end of {log}:\n{log.read_text(errors='replace')[-3000:]}"
                for log in logs
                if log.exists() and log.stat().st_size
            )
            raise StackError(f"{what} exited while starting{tails or ' (its logs are empty)'}")
        if listens(pid, port):
            return
        if time.monotonic() > deadline:
            raise StackError(f"{what} is not listening on 127.0.0.1:{port} after {START_TIMEOUT}s")
        time.sleep(0.1)


def stop_process(state: State, name: str, timeout: float = 15.0) -> None:
    pid = state.pids.get(name)
    if pid is None:
        return
    if alive(pid) and ours(pid, state):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            say(f"{name} (pid {pid}) did not stop in {timeout:g}s: SIGKILL")
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # a process group may outlive its leader (Apache's children): SIGKILL whatever is left of it
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    del state.pids[name]
    state.save()


# --- MariaDB ----------------------------------------------------------------------------------


def start_mariadb(state: State, port: int) -> dict[str, str]:
    base = state.dir / "mariadb"
    datadir = base / "data"
    base.mkdir()
    user = ["--user=mysql"] if run_as_root() else []
    if run_as_root():
        chown(base, "mysql")
    say("creating the MariaDB data directory")
    result = subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",  # root without a password...
            "--skip-test-db",
            *user,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"mariadb-install-db failed:\n{result.stdout}{result.stderr}")
    sock = base / "mysqld.sock"
    log = base / "mariadbd.log"
    pid = start_process(
        state,
        "mariadb",
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={sock}",
            f"--port={port}",
            "--bind-address=127.0.0.1",  # ...and reachable from 127.0.0.1 only
            "--skip-name-resolve",
            f"--pid-file={base / 'mariadbd.pid'}",
            "--innodb-buffer-pool-size=64M",
            *user,
        ],
        log,
    )
    wait_listening(pid, port, "mariadbd", log)
    password = secrets.token_urlsafe(18)
    sql = (
        "CREATE DATABASE wordpress CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
        f"CREATE USER 'wordpress'@'127.0.0.1' IDENTIFIED BY '{password}';"
        "GRANT ALL PRIVILEGES ON wordpress.* TO 'wordpress'@'127.0.0.1';"
        # the root account mariadb-install-db made for 127.0.0.1 and ::1 would have no password
        # either: keep root to the unix socket
        "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';"
    )
    result = subprocess.run(
        ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e", sql],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"creating the WordPress database failed:\n{result.stderr}")
    return {
        "host": f"127.0.0.1:{port}",
        "name": "wordpress",
        "user": "wordpress",
        "password": password,
    }


# --- WordPress and Apache ---------------------------------------------------------------------


def php_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def install_wordpress(state: State, db: dict[str, str], site_url: str) -> Path:
    """One copy of Debian's WordPress for both servers, with our wp-config.php."""
    docroot = state.dir / "wordpress"
    say(f"copying {WORDPRESS_SOURCE} to {docroot}")
    # Debian's copy links some files to other packages (symlinks=False copies their content),
    # its wp-config.php reads /etc/wordpress (ours replaces it) and .htaccess points there too.
    shutil.copytree(
        WORDPRESS_SOURCE,
        docroot,
        symlinks=False,
        ignore=shutil.ignore_patterns(".htaccess", "wp-config.php"),
    )
    shutil.copy(HERE / "wp-config-proxy.php", docroot / "wp-config-proxy.php")
    uploads = docroot / "wp-content" / "uploads"
    uploads.mkdir()
    keys = "".join(
        f"define({php_string(key)}, {php_string(secrets.token_urlsafe(48))});\n"
        for key in (
            "AUTH_KEY",
            "SECURE_AUTH_KEY",
            "LOGGED_IN_KEY",
            "NONCE_KEY",
            "AUTH_SALT",
            "SECURE_AUTH_SALT",
            "LOGGED_IN_SALT",
            "NONCE_SALT",
        )
    )
    (docroot / "wp-config.php").write_text(
        f"""<?php
// Written by trilb's examples/wordpress/stack.py for the stack in {state.dir}.

// Behind trilb: trust its X-Forwarded-Proto, so WordPress knows the visitor uses HTTPS.
require_once __DIR__ . '/wp-config-proxy.php';

// The address visitors use (trilb's HTTPS frontend), whichever server answers.
define('WP_HOME', {php_string(site_url)});
define('WP_SITEURL', {php_string(site_url)});

define('DB_NAME', {php_string(db["name"])});
define('DB_USER', {php_string(db["user"])});
define('DB_PASSWORD', {php_string(db["password"])});
define('DB_HOST', {php_string(db["host"])});
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
$table_prefix = 'wp_';

{keys}
// A test machine: no calls to wordpress.org (updates, news), and no cron requests to the site
// name, which only the clients given --resolve can reach.
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('DISABLE_WP_CRON', true);
define('WP_ENVIRONMENT_TYPE', 'local');
define('WP_DEBUG', false);

if (!defined('ABSPATH')) {{
    define('ABSPATH', __DIR__ . '/');
}}
require_once ABSPATH . 'wp-settings.php';
"""
    )
    if run_as_root():
        chown(uploads, "www-data")
    return docroot


def php_module() -> str:
    """libphp8.2.so on Debian 12: whichever PHP libapache2-mod-php brought."""
    found = sorted(APACHE_MODULES.glob("libphp*.so"))
    if not found:
        raise StackError(f"no libphp*.so in {APACHE_MODULES}: is libapache2-mod-php installed?")
    return found[-1].name


def apache_conf(state: State, name: str, port: int, docroot: Path) -> Path:
    base = state.dir / name
    (base / "run").mkdir(parents=True)
    user = "User www-data\nGroup www-data\n" if run_as_root() else ""
    modules = "\n".join(
        f"LoadModule {module}_module {APACHE_MODULES / file}"
        for module, file in (
            ("mpm_prefork", "mod_mpm_prefork.so"),  # mod_php is not thread-safe
            ("authz_core", "mod_authz_core.so"),
            ("dir", "mod_dir.so"),
            ("mime", "mod_mime.so"),
            ("headers", "mod_headers.so"),
            ("remoteip", "mod_remoteip.so"),
            ("rewrite", "mod_rewrite.so"),
            ("php", php_module()),
        )
    )
    conf = base / "apache2.conf"
    conf.write_text(
        f"""# Written by trilb's examples/wordpress/stack.py: server {name} for {state.dir}.
ServerRoot "{base}"
ServerName {name}.{SITE_NAME}
Listen 127.0.0.1:{port}
PidFile "{base}/run/apache2.pid"
DefaultRuntimeDir "{base}/run"
{user}{modules}

StartServers 2
MinSpareServers 2
MaxSpareServers 5
MaxRequestWorkers 20
KeepAliveTimeout 15

TypesConfig /etc/mime.types
ErrorLog "{base}/error.log"
LogLevel warn

# trilb (127.0.0.1) puts the client's address at the end of X-Forwarded-For: %a is that client,
# %{{c}}a the address the request came from (trilb).
RemoteIPHeader X-Forwarded-For
RemoteIPInternalProxy 127.0.0.1
LogFormat "%a %{{c}}a %l %u %t \\"%r\\" %>s %O \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" proxied
CustomLog "{base}/access.log" proxied

# Which server answered, for the curious and for the tests.
Header always set X-Backend "{name}"

php_value upload_max_filesize 64M
php_value post_max_size 64M
php_value memory_limit 256M

DocumentRoot "{docroot}"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory "{docroot}">
    Require all granted
    DirectoryIndex index.php index.html
    <FilesMatch "\\.php$">
        SetHandler application/x-httpd-php
    </FilesMatch>
    # WordPress's own .htaccess rules, for pretty permalinks
    RewriteEngine On
    RewriteBase /
    RewriteRule ^index\\.php$ - [L]
    RewriteCond %{{REQUEST_FILENAME}} !-f
    RewriteCond %{{REQUEST_FILENAME}} !-d
    RewriteRule . /index.php [L]
</Directory>
<Directory "{docroot}/wp-content/uploads">
    <FilesMatch "\\.ph(ar|p|ps|tml)$">
        Require all denied
    </FilesMatch>
</Directory>
"""
    )
    return conf


def start_apache(state: State, name: str) -> None:
    conf = Path(state.data["apache"][name]["conf"])
    port = int(state.data["apache"][name]["port"])
    log = conf.parent / "apache2.out"
    # A killed Apache leaves its pid file; if that pid is a zombie nobody reaped (a container
    # without an init reaping orphans) Apache would say "httpd (pid N) already running".
    pidfile = conf.parent / "run" / "apache2.pid"
    with contextlib.suppress(FileNotFoundError, ValueError):
        if not alive(int(pidfile.read_text().split()[0])):
            pidfile.unlink()
    pid = start_process(state, name, ["apache2", "-f", str(conf), "-DFOREGROUND"], log)
    wait_listening(pid, port, f"apache2 {name}", log, conf.parent / "error.log")
    say(f"{name}: Apache on 127.0.0.1:{port} (pid {pid})")


# --- trilb ------------------------------------------------------------------------------------


def trilb_command() -> list[str]:
    """The trilb of this interpreter (a venv with trilb installed), else the one on PATH."""
    probe = subprocess.run([sys.executable, "-c", "import trilb"], capture_output=True, check=False)
    if probe.returncode == 0:
        return [sys.executable, "-m", "trilb"]
    found = shutil.which("trilb")
    if found is None:
        why = probe.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise StackError(
            f"{sys.executable} cannot import trilb ({''.join(why)}) and there is no trilb on PATH:"
            " run this with the Python of trilb's venv"
        )
    return [found]


def stats_enabled(template: str) -> bool:
    """trilb.toml has its [stats] section switched on (it is commented out until trilb has it)."""
    return re.search(r"^\[stats\]", template, re.MULTILINE) is not None


def trilb_config(template: str, ports: dict[str, int]) -> str:
    replacements = {
        "127.0.0.1:8080": f"127.0.0.1:{ports['http']}",
        "127.0.0.1:8443": f"127.0.0.1:{ports['https']}",
        "127.0.0.1:8081": f"127.0.0.1:{ports['wp1']}",
        "127.0.0.1:8082": f"127.0.0.1:{ports['wp2']}",
    }
    if "stats" in ports:
        replacements["127.0.0.1:8404"] = f"127.0.0.1:{ports['stats']}"
    for old in replacements:
        if old not in template:
            raise StackError(f"trilb.toml no longer mentions {old}; update stack.py's ports")
    for old, new in replacements.items():
        template = template.replace(old, new)
    return template


# --- commands ---------------------------------------------------------------------------------


def up(args: argparse.Namespace) -> None:
    state_dir: Path = args.state_dir.absolute()
    if (state_dir / "state.json").exists():
        raise StackError(f"a stack is already in {state_dir}: run `down` first")
    install_packages()
    ports = {
        "http": args.http_port,
        "https": args.https_port,
        "wp1": args.wp_ports[0],
        "wp2": args.wp_ports[1],
        "db": args.db_port,
    }
    template = (HERE / "trilb.toml").read_text()
    if stats_enabled(template):
        ports["stats"] = args.stats_port
    if len(set(ports.values())) != len(ports):
        raise StackError(f"the ports must all differ: {ports}")
    for what, port in ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise StackError(f"port {port} ({what}) is taken: {exc.strerror}") from exc
    trilb = trilb_command()
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o755)
    if run_as_root():
        check_reachable(state_dir, "www-data")
    state = State(state_dir)
    https_url = f"https://{SITE_NAME}:{ports['https']}"
    state.data.update(
        {
            "ports": ports,
            "site_url": https_url,
            "http_url": f"http://{SITE_NAME}:{ports['http']}",
            "stats_url": f"http://127.0.0.1:{ports['stats']}/" if "stats" in ports else None,
            "ca": str(state_dir / "certs" / "ca.pem"),
            "trilb_log": str(state_dir / "trilb.log"),
            "trilb_config": str(state_dir / "trilb.toml"),
            "apache": {},
        }
    )
    state.save()
    try:
        db = start_mariadb(state, ports["db"])
        say(f"MariaDB on 127.0.0.1:{ports['db']} (pid {state.pids['mariadb']})")
        docroot = install_wordpress(state, db, https_url)
        for name in SERVERS:
            conf = apache_conf(state, name, ports[name], docroot)
            state.data["apache"][name] = {
                "port": ports[name],
                "conf": str(conf),
                "access_log": str(conf.parent / "access.log"),
                "error_log": str(conf.parent / "error.log"),
            }
            state.save()
            start_apache(state, name)
        certs = subprocess.run(
            [*trilb, "certs", "--dir", str(state_dir / "certs"), SITE_NAME],
            capture_output=True,
            text=True,
            check=False,
        )
        if certs.returncode != 0:
            raise StackError(f"trilb certs failed:\n{certs.stderr}")
        config = state_dir / "trilb.toml"
        config.write_text(trilb_config(template, ports))
        log = state_dir / "trilb.log"
        pid = start_process(state, "trilb", [*trilb, "serve", str(config)], log)
        # (the plain HTTP port: a bare connect to the TLS one would log a failed handshake)
        wait_listening(pid, ports["http"], "trilb", log)
        say(f"trilb on 127.0.0.1:{ports['http']} and :{ports['https']} (pid {pid})")
    except BaseException:
        say("start-up failed: stopping what was started (the state folder stays for a look)")
        for name in reversed(list(state.pids)):
            stop_process(state, name)
        raise
    print_status(state)


def print_status(state: State) -> None:
    ca = state.data["ca"]
    https = state.data["ports"]["https"]
    print(
        f"""
WordPress behind trilb is up ({state.dir}):
  site       {state.data["site_url"]}/   (first visit: the WordPress installer)
  admin      {state.data["site_url"]}/wp-admin/
  plain HTTP {state.data["http_url"]}/   (redirects to the site)
  stats      {state.data["stats_url"] or "off (see trilb.toml)"}

{SITE_NAME} is not in DNS: give curl the address and the development CA, e.g.
  curl --cacert {ca} --resolve {SITE_NAME}:{https}:127.0.0.1 -I {state.data["site_url"]}/
(a browser needs a hosts entry "127.0.0.1 {SITE_NAME}" and {ca} trusted).

processes (stopped by `down`):"""
    )
    for name, pid in state.pids.items():
        print(f"  {name:8} pid {pid:<8} {'running' if alive(pid) else 'NOT RUNNING'}")
    print("logs:")
    print(f"  trilb    {state.data['trilb_log']}")
    for name, info in state.data["apache"].items():
        print(f"  {name:8} {info['access_log']} (and error.log beside it)")
    print(f"  mariadb  {state.dir / 'mariadb' / 'mariadbd.log'}")


def load_state(state_dir: Path) -> State:
    if not (state_dir / "state.json").exists():
        raise StackError(f"no stack in {state_dir} (no state.json)")
    return State(state_dir)


def down(args: argparse.Namespace) -> None:
    state_dir: Path = args.state_dir.absolute()
    if not (state_dir / "state.json").exists():
        say(f"no stack in {state_dir}: nothing to do")
        return
    state = State(state_dir)
    # trilb first (no new requests), the database last
    order = ["trilb", *SERVERS, "mariadb"]
    for name in sorted(state.pids, key=lambda n: order.index(n) if n in order else -1):
        say(f"stopping {name} (pid {state.pids[name]})")
        stop_process(state, name)
    shutil.rmtree(state_dir)
    say(f"removed {state_dir}")


def status(args: argparse.Namespace) -> None:
    print_status(load_state(args.state_dir.absolute()))


def stop_one(args: argparse.Namespace) -> None:
    state = load_state(args.state_dir.absolute())
    if args.name not in state.pids:
        raise StackError(f"{args.name} is not running")
    stop_process(state, args.name)
    say(f"stopped {args.name}")


def start_one(args: argparse.Namespace) -> None:
    state = load_state(args.state_dir.absolute())
    pid = state.pids.get(args.name)
    if pid is not None and alive(pid):
        raise StackError(f"{args.name} is running already (pid {pid})")
    start_apache(state, args.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help=f"where the stack's files, logs and pids live (default {DEFAULT_STATE})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="install what is missing and start everything")
    up_parser.add_argument("--http-port", type=int, default=8080)
    up_parser.add_argument("--https-port", type=int, default=8443)
    up_parser.add_argument(
        "--wp-ports",
        type=lambda text: [int(port) for port in text.split(",")],
        default=[8081, 8082],
        help="the two Apache ports, comma-separated (default 8081,8082)",
    )
    up_parser.add_argument("--db-port", type=int, default=3307)
    up_parser.add_argument(
        "--stats-port", type=int, default=8404, help="if trilb.toml has its [stats] on"
    )
    up_parser.set_defaults(func=up)
    commands.add_parser(
        "down", help="stop what `up` started, remove the state folder"
    ).set_defaults(func=down)
    commands.add_parser("status", help="show the processes, URLs and logs").set_defaults(
        func=status
    )
    for verb, func, text in (("stop", stop_one, "stop"), ("start", start_one, "start again")):
        sub = commands.add_parser(verb, help=f"{text} one Apache server")
        sub.add_argument("name", choices=SERVERS)
        sub.set_defaults(func=func)
    args = parser.parse_args(argv)
    if args.command == "up" and len(args.wp_ports) != 2:
        parser.error("--wp-ports takes two ports")
    try:
        args.func(args)
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
