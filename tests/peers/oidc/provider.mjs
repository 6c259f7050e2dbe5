// A real OpenID provider for the token-login tests (tests/tests/oidc.rs): oidc-provider on a
// free port of 127.0.0.1, one confidential client per test user. It issues JWT access tokens
// (RS256, audience "urn:lakegate") through its own token endpoint with the client-credentials
// grant, prints them, and serves discovery and JWKS until its stdin closes.
//   issuer <url>
//   token <user> <jwt>
// With SSO=1 it prints the issuer first and waits for a line `sso <redirect_uri>` (the gateway,
// started meanwhile, knows its sign-in port), then also registers the gateway's sign-in client
// ("lakegate", secret "lakegate-secret", authorization code + refresh token) and runs its
// development login pages (any password; the login name is the account).
// Further lines on stdin change the directory:
//   groups <user> <group,group>     the user's groups from now on
//   disable <user>                  the account no longer exists (refresh fails)
import http from 'node:http';
import readline from 'node:readline';
import Provider from 'oidc-provider';

// Test users as the company directory would describe them.
const users = {
  erin: { groups: ['eu-sales'], email: 'erin@example.com' },
  frank: { groups: ['gtm-stewards'], email: 'frank@example.com' },
};

const disabled = new Set();
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;
console.log(`issuer ${issuer}`);
let ssoRedirect;
if (process.env.SSO) {
  const { value, done } = await lines.next();
  if (done || !value.startsWith('sso ')) process.exit(1);
  ssoRedirect = value.slice('sso '.length).trim();
}

const provider = new Provider(issuer, {
  clients: [
    ...Object.keys(users).map((user) => ({
      client_id: user,
      client_secret: `${user}-secret`,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    })),
    ...(ssoRedirect ? [{
      client_id: 'lakegate',
      client_secret: 'lakegate-secret',
      grant_types: ['authorization_code', 'refresh_token'],
      redirect_uris: [ssoRedirect],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }] : []),
  ],
  // ID tokens carry the scopes' claims even when an access token is issued too.
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    profile: ['preferred_username'],
    email: ['email'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  findAccount: (_ctx, id) => {
    if (!users[id] || disabled.has(id)) return undefined;
    return {
      accountId: id,
      claims: () => ({ sub: id, preferred_username: id, groups: users[id].groups, email: users[id].email }),
    };
  },
  // Refresh tokens for the sign-in client whenever offline_access was granted.
  issueRefreshToken: (_ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  ttl: { IdToken: 3600, AccessToken: 3600, RefreshToken: 86400, Grant: 86400, Session: 86400, Interaction: 600 },
  features: {
    devInteractions: { enabled: Boolean(ssoRedirect) },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:lakegate',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: '',
        audience: 'urn:lakegate',
        accessTokenFormat: 'jwt',
        accessTokenTTL: 3600,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => {
    const user = users[token.clientId];
    return user ? { preferred_username: token.clientId, groups: user.groups, email: user.email } : {};
  },
});
provider.on('server_error', (_ctx, err) => console.error('provider error', err));
handler = provider.callback();

for (const user of Object.keys(users)) {
  const response = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: 'Basic ' + Buffer.from(`${user}:${user}-secret`).toString('base64'),
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', resource: 'urn:lakegate' }),
  });
  const body = await response.json();
  if (!body.access_token) {
    console.error('no token', body);
    process.exit(1);
  }
  console.log(`token ${user} ${body.access_token}`);
}
console.log('ready');
for await (const line of lines) {
  const [command, user, value] = line.trim().split(' ');
  if (command === 'groups' && users[user]) users[user].groups = value ? value.split(',') : [];
  if (command === 'disable') disabled.add(user);
  console.log(`done ${command} ${user}`);
}
process.exit(0);
