// A real OpenID provider for the token-login tests (tests/tests/oidc.rs): oidc-provider on a
// free port of 127.0.0.1, one confidential client per test user. It issues JWT access tokens
// (RS256, audience "urn:lakegate") through its own token endpoint with the client-credentials
// grant, prints them, and serves discovery and JWKS until its stdin closes.
//   issuer <url>
//   token <user> <jwt>
import http from 'node:http';
import Provider from 'oidc-provider';

// Test users as the company directory would describe them.
const users = {
  erin: { groups: ['eu-sales'], email: 'erin@example.com' },
  frank: { groups: ['gtm-stewards'], email: 'frank@example.com' },
};

let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: Object.keys(users).map((user) => ({
    client_id: user,
    client_secret: `${user}-secret`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  })),
  features: {
    devInteractions: { enabled: false },
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

console.log(`issuer ${issuer}`);
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
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
