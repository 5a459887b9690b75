// Verify the identity JWT that wxgate forwards upstream (go-jose: JSONWebKeySet + jwt).
//
//	go run verify.go JWKS_URL ISSUER AUDIENCE TOKEN
//
// Prints the verified claims as JSON; exits 1 when the token is refused.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	jose "gopkg.in/square/go-jose.v2"
	"gopkg.in/square/go-jose.v2/jwt"
)

// fetchKeys reads the gateway's JWKS. In an app, keep the set and fetch it again only when a
// token names an unknown kid.
func fetchKeys(url string) (*jose.JSONWebKeySet, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwks: HTTP %d", resp.StatusCode)
	}
	var keys jose.JSONWebKeySet
	err = json.NewDecoder(resp.Body).Decode(&keys)
	return &keys, err
}

// verify returns the token's claims once its signature, issuer, audience and expiry check out.
func verify(keys *jose.JSONWebKeySet, issuer, audience, token string) (map[string]any, error) {
	tok, err := jwt.ParseSigned(token)
	if err != nil {
		return nil, err
	}
	// Pinned: the token never chooses its algorithm.
	if len(tok.Headers) != 1 || tok.Headers[0].Algorithm != string(jose.ES256) {
		return nil, errors.New("unexpected algorithm")
	}
	found := keys.Key(tok.Headers[0].KeyID)
	if len(found) != 1 {
		return nil, errors.New("unknown kid")
	}
	var std jwt.Claims
	var all map[string]any
	if err := tok.Claims(found[0].Key, &std, &all); err != nil {
		return nil, err
	}
	if std.Expiry == nil {
		return nil, errors.New("no exp")
	}
	expected := jwt.Expected{Issuer: issuer, Audience: jwt.Audience{audience}, Time: time.Now()}
	if err := std.ValidateWithLeeway(expected, 30*time.Second); err != nil {
		return nil, err
	}
	return all, nil
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: verify JWKS_URL ISSUER AUDIENCE TOKEN")
		os.Exit(2)
	}
	keys, err := fetchKeys(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "rejected:", err)
		os.Exit(1)
	}
	claims, err := verify(keys, os.Args[2], os.Args[3], os.Args[4])
	if err != nil {
		fmt.Fprintln(os.Stderr, "rejected:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(claims)
	fmt.Println(string(out))
}
