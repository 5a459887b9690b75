// Verify the identity JWT that wxgate forwards upstream (jose: createRemoteJWKSet + jwtVerify).
//
//   npm install jose
//   node verify.mjs JWKS_URL ISSUER AUDIENCE TOKEN
//
// Prints the verified claims as JSON; exits 1 when the token is refused.
import { createRemoteJWKSet, jwtVerify } from "jose";

const args = process.argv.slice(2);
if (args.length !== 4) {
  console.error("usage: node verify.mjs JWKS_URL ISSUER AUDIENCE TOKEN");
  process.exit(2);
}
const [jwksUrl, issuer, audience, token] = args;

// In an app, create this once: it caches the keys and refetches on an unknown kid.
const jwks = createRemoteJWKSet(new URL(jwksUrl));

try {
  const { payload } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ["ES256"], // pinned: the token never chooses its algorithm
    requiredClaims: ["exp", "sub"],
    clockTolerance: 30,
  });
  console.log(JSON.stringify(payload));
} catch (error) {
  console.error(`rejected: ${error.code ?? "error"}: ${error.message}`);
  process.exit(1);
}
