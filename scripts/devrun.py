"""``make run``: a development gateway in the foreground.

With HOOPD_CONFIG set, runs ``twistd -n hoopd`` with that config. Otherwise it keeps a
PostgreSQL cluster in ``.run/pg`` (made once, reused), a ``shop`` database with demo
data, generated secrets in ``.run/secrets`` and TLS files in ``.run/tls``, writes
``.run/hoopd.toml`` and prints the psql line to connect with. Ctrl-C stops the gateway,
then the cluster.
"""
from __future__ import annotations

import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402

from hoopd.control.tokens import hash_token  # noqa: E402
from hoopd.pgwire.scram import make_verifier  # noqa: E402
from tests.certs import write_self_signed  # noqa: E402
from tests.pgcluster import SHOP_SQL, Cluster, quote_literal  # noqa: E402

RUN = ROOT / ".run"
LISTEN_PORT = 6432
HTTP_PORT = 6480
SSH_PORT = 6422
APP_ROLE = "shop_app"
READ_ROLE = "shop_ro"  # what read_only logs in as: a role that may only SELECT (the recommended set-up)
TWISTD = Path(sys.executable).parent / "twistd"


def secret(name: str) -> str:
    """The secret in .run/secrets/NAME, generated (0600) the first time."""
    folder = RUN / "secrets"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip()


def tls_files() -> tuple[Path, Path]:
    """A server cert/key in .run/tls, renewed when missing or within a day of expiry."""
    folder = RUN / "tls"
    cert, key = folder / "server.crt", folder / "server.key"
    if cert.exists() and key.exists():
        expires = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
        if expires - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=1):
            return cert, key
    folder.mkdir(parents=True, exist_ok=True)
    return write_self_signed(folder, "server")


def start_cluster(cluster: Cluster) -> None:
    """Start the dev cluster on a free port (initdb the first time); the shop database and role."""
    if not cluster.initialized:
        print(f"devrun: creating a PostgreSQL cluster in {cluster.data}", flush=True)
        cluster.init(["local all all trust", "host all all 127.0.0.1/32 scram-sha-256"])
    cluster.stop("fast")  # one left running by an earlier run that was killed
    cluster.start()
    for role in (APP_ROLE, READ_ROLE):
        cluster.psql(f"""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                    CREATE ROLE {role} LOGIN;
                END IF;
            END $$;
            ALTER ROLE {role} LOGIN PASSWORD {quote_literal(secret(role))};
        """)
    if not cluster.psql("SELECT 1 FROM pg_database WHERE datname = 'shop'").strip():
        cluster.psql(f"CREATE DATABASE shop OWNER {APP_ROLE}")
        cluster.psql(f"SET ROLE {APP_ROLE};\n{SHOP_SQL}", dbname="shop")
    cluster.psql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READ_ROLE};"
                 f"ALTER DEFAULT PRIVILEGES FOR ROLE {APP_ROLE} IN SCHEMA public GRANT SELECT ON TABLES TO {READ_ROLE};",
                 dbname="shop")


def ssh_key() -> Path:
    """.run/ssh/dev.key (made once) and the console's authorized keys file naming it dev."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    folder = RUN / "ssh"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = folder / "dev.key"
    if not key.exists():
        private = Ed25519PrivateKey.generate()
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
        public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
        (folder / "admins").write_text(f"dev {public} dev@make-run\n")
    return key


def write_config(pg_port: int, dev_password: str, agent_password: str, api_token_hash: str,
                 agent_token_hash: str) -> Path:
    """.run/hoopd.toml: local users dev (admin on shop) and agent (read_write like an AI
    coding agent might get, every write held until dev approves it, emails and phone
    numbers masked), the shop connection, the control port and the SSH console."""
    cert, key = tls_files()
    journal, state = RUN / "journal", RUN / "state"
    journal.mkdir(mode=0o700, exist_ok=True)
    journal.chmod(0o700)  # a folder an earlier version made 0755
    state.mkdir(exist_ok=True)
    q = json.dumps  # a JSON string is a valid TOML basic string
    text = f"""# Written by scripts/devrun.py on every `make run`: edits are overwritten.
[gateway]
node = "dev"
state_dir = {q(str(state))}

[listen]
postgres = "tcp:{LISTEN_PORT}:interface=127.0.0.1"
http = "tcp:{HTTP_PORT}:interface=127.0.0.1"
ssh = "tcp:{SSH_PORT}:interface=127.0.0.1"

[control]
shutdown_grace = "2s"
ssh_authorized_keys = {q(str(RUN / "ssh" / "admins"))}

[[control.tokens]]
name = "dev"
role = "admin"
token_hash = {q(api_token_hash)}
user = "dev"                      # reviews decided with this token count as dev's (group dba)

[[control.tokens]]                # the agent's MCP token: tools only, as the agent user
name = "agent-mcp"
role = "caller"
token_hash = {q(agent_token_hash)}
user = "agent"

[mcp]
enabled = true

[[rules]]                         # the agent may write, but every write waits for a human
name = "agent-writes-need-approval"
action = "review"
kinds = ["insert", "update", "delete", "merge", "copy_from"]
groups = ["ai-agents"]
reviewers = ["dba"]
timeout = "15m"
message = "the agent's writes are approved by a human"

[tls]
mode = "allow"
cert = {q(str(cert))}
key = {q(str(key))}

[journal]
dir = {q(str(journal))}

[[users]]
name = "dev"
password_hash = {q(make_verifier(dev_password))}
groups = ["dba"]

[[users]]
name = "agent"
password_hash = {q(make_verifier(agent_password))}
groups = ["ai-agents"]

[[masking.rules]]                 # what the agent selects from customers arrives masked
name = "customer-contacts"
columns = ["public.customers.email", "public.customers.phone"]
groups = ["ai-agents"]

[[masking.rules]]                 # and an email or phone number anywhere else, by content
name = "contact-details"
detectors = ["email", "phone"]
groups = ["ai-agents"]

[connections.shop]
host = "127.0.0.1"
port = {pg_port}
database = "shop"
tls = "disable"

[connections.shop.credentials.default]
user = "{APP_ROLE}"
password_file = {q(str(RUN / "secrets" / APP_ROLE))}

[connections.shop.credentials.read_only]
user = "{READ_ROLE}"
password_file = {q(str(RUN / "secrets" / READ_ROLE))}

[connections.shop.access]
dba = "admin"
ai-agents = "read_write"
"""
    path = RUN / "hoopd.toml"
    path.write_text(text)
    return path


def run_gateway(config: Path) -> int:
    """twistd in the foreground, in its own process group: our SIGINT/SIGTERM stops it once.

    It is told with SIGTERM: twistd leaves SIGINT alone when it started out ignored
    (as it is for background jobs of a non-interactive shell).
    """
    proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "hoopd", "--config", str(config)],
                            cwd=ROOT, process_group=0)

    stopped = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopped
        if proc.poll() is None:
            stopped = True
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    rc = proc.wait()
    return 0 if stopped and rc in (0, -signal.SIGTERM) else rc  # twistd re-raises the signal on exit


def main() -> int:
    configured = os.environ.get("HOOPD_CONFIG")
    if configured:
        return run_gateway(Path(configured))
    cluster = Cluster(RUN / "pg")
    try:
        start_cluster(cluster)
        dev_password, agent_password, api_token = secret("dev"), secret("agent"), secret("api-token")
        agent_token = secret("agent-mcp-token")
        key = ssh_key()
        config = write_config(cluster.port, dev_password, agent_password, hash_token(api_token),
                              hash_token(agent_token))
        mcp = json.dumps({"mcpServers": {"hoopd": {"url": f"http://127.0.0.1:{HTTP_PORT}/mcp",
                                                   "headers": {"Authorization": f"Bearer {agent_token}"}}}})
        print(f"devrun: PostgreSQL on 127.0.0.1:{cluster.port}, gateway config {config}\n"
              f"devrun: connect with (Ctrl-C stops the gateway and the cluster):\n\n"
              f'  PGPASSWORD={dev_password} psql "host=127.0.0.1 port={LISTEN_PORT} dbname=shop user=dev"'
              "      # admin\n"
              f'  PGPASSWORD={agent_password} psql "host=127.0.0.1 port={LISTEN_PORT} dbname=shop user=agent"'
              "  # read_write, writes reviewed\n\n"
              f"devrun: the agent's `delete from orders where id = 1` waits; approve it in the SSH console:\n"
              f"  ssh -i {key} -p {SSH_PORT} -o StrictHostKeyChecking=no dev@127.0.0.1 reviews\n"
              f"  ssh -i {key} -p {SSH_PORT} -o StrictHostKeyChecking=no dev@127.0.0.1 approve ID\n\n"
              f"devrun: live sessions: curl -H 'Authorization: Bearer {api_token}' "
              f"http://127.0.0.1:{HTTP_PORT}/api/v1/sessions\n"
              f"devrun: web console: http://127.0.0.1:{HTTP_PORT}/ui (sign in with the token {api_token})\n"
              f"devrun: the journal: .venv/bin/hoopd journal tail -f --dir {RUN / 'journal'}\n"
              f"devrun: an MCP client (Cursor's mcp.json) reaches the database as the agent, no credential:\n"
              f"  {mcp}\n",
              flush=True)
        return run_gateway(config)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the cluster running
        cluster.stop("fast")
        print("devrun: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
