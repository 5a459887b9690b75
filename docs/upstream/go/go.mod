module example.com/wxgate-upstream-verify

go 1.19

require gopkg.in/square/go-jose.v2 v2.6.0
