
Ÿ
)"'spiffe://cluster.local/ns/shop/sa/front"rpGET
authorizationBearer t0ken
:path/admin/users?limit=10
x-userann"/admin/users?limit=10*work